"""Access lines under a real uvicorn: exactly the ones asked for, whichever side asks.

kiki's own line replaces uvicorn's; with kiki's off, uvicorn's ``--no-access-log`` still
means no access lines, and without that flag uvicorn's line goes through the JSON chain.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.integration

NO_EXPORT = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


@pytest.mark.parametrize(
    ("kiki_line", "uvicorn_args", "expected"),
    [
        ("true", [], ["kiki_otel.access"]),
        ("true", ["--no-access-log"], ["kiki_otel.access"]),
        ("false", [], ["uvicorn.access"]),
        ("false", ["--no-access-log"], []),
    ],
)
def test_access_lines_are_the_ones_asked_for(
    kiki_line: str, uvicorn_args: list[str], expected: list[str]
) -> None:
    env = {**NO_EXPORT, "KIKI_OTEL_HTTP__ACCESS_LOG": kiki_line}
    with ServerProcess(env=env, extra_args=uvicorn_args) as server:
        server.wait_ready()  # /health/live: excluded from kiki's line, not from uvicorn's
        for _ in range(4):
            assert httpx.get(server.url + "/plans/7").status_code == 200
        server.stop()  # graceful: every line is out, and read, once it has exited
        access = [
            line["logger"]
            for line in server.json_lines()
            if line.get("logger") in ("kiki_otel.access", "uvicorn.access")
            and "/plans/" in str(line.get("path", line.get("event", "")))
        ]
        assert access == expected * 4, server.output()
