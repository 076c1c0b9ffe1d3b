"""Access lines under a real uvicorn: exactly the ones asked for, whichever side asks.

kiki's own line replaces uvicorn's; with kiki's off, uvicorn's ``--no-access-log`` still
means no access lines, and without that flag uvicorn's line goes through the JSON chain.
"""

from __future__ import annotations

import signal
from pathlib import Path

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


RUN_IN_CODE = """
import sys

import uvicorn
from fastapi import FastAPI

import kiki_otel

app = FastAPI()


@app.get("/plans/{plan_id}")
async def plan(plan_id: int) -> dict[str, int]:
    return {"plan_id": plan_id}


kiki_otel.configure(app)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]))  # uvicorn's logging config: default
"""


def test_uvicorn_run_in_code_keeps_the_json_chain(tmp_path: Path) -> None:
    """``uvicorn.run(app)`` without ``log_config=None`` (the migration guide says to pass it;
    not everyone will): uvicorn sets up its text logging after configure() ran. From the
    lifespan's start its loggers go through the JSON chain again: one access line a request
    (kiki's), no text lines but the two uvicorn writes before it starts the app."""
    script = tmp_path / "run_in_code.py"
    script.write_text(RUN_IN_CODE)
    with ServerProcess(str(script), server="script", env=NO_EXPORT) as server:
        server.wait_ready()
        for _ in range(3):
            assert httpx.get(server.url + "/plans/7").status_code == 200
        server.signal(signal.SIGINT)
        server.wait()
    out = "\n".join(server.lines)
    text = [line for line in server.lines if not line.startswith("{")]
    assert text == [
        f"INFO:     Started server process [{server.pid}]",
        "INFO:     Waiting for application startup.",
    ], out
    records = server.json_lines()
    access = [r["logger"] for r in records if "/plans/" in str(r.get("path", r.get("event")))]
    assert access == ["kiki_otel.access"] * 3, out
    assert any(r.get("logger") == "uvicorn.error" for r in records), out  # JSON now
