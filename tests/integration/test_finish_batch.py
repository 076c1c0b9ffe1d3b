"""Ended requests finished in batches (``KIKI_OTEL_HTTP__FINISH_BATCH``) under a real uvicorn.

Sixteen keep-alive clients keep a server busy, so some requests end in the same turns of
the event loop and their span ends, access lines and records are finished together, later
than their responses (tests/test_http_server.py covers the rules turn by turn). Each must
still carry its own request's ids, path and status, on stdout and over OTLP to a real
receiver, and none may be lost at SIGTERM.
"""

from __future__ import annotations

import asyncio
import importlib.util

import httpx
import pytest

from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.integration

CLIENTS = 16
EACH = 25
FLAVOURS = {
    "plain": ["--loop", "asyncio", "--http", "h11"],
    "standard": ["--loop", "uvloop", "--http", "httptools"],
}


async def _load(url: str) -> list[tuple[int, httpx.Response]]:
    """``CLIENTS`` keep-alive clients, ``EACH`` requests each, all in flight together."""

    async def client(first: int) -> list[tuple[int, httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as c:
            return [(n, await c.get(f"/plans/{n}")) for n in range(first, first + EACH)]

    done = await asyncio.gather(*(client(i * EACH) for i in range(CLIENTS)))
    return [pair for pairs in done for pair in pairs]


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_each_batched_request_keeps_its_own_telemetry(flavour: str) -> None:
    if flavour == "standard" and not (
        importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
    ):
        pytest.skip("uvicorn[standard] flavour not installed")
    with OTLPReceiver() as rx:
        env = {
            "OTEL_SERVICE_NAME": "batch-test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRICS_EXPORTER": "none",
            "KIKI_OTEL_HTTP__FINISH_BATCH": "8",
        }
        with ServerProcess(env=env, extra_args=FLAVOURS[flavour]) as server:
            server.wait_ready()
            responses = asyncio.run(_load(server.url))
            server.stop()  # SIGTERM: whatever is still batched or queued must come out
        assert [r.status_code for _, r in responses] == [200] * CLIENTS * EACH
        expected = {}
        for n, response in responses:
            _, trace_id, span_id, _ = response.headers["traceresponse"].split("-")
            assert response.headers["x-request-id"] == trace_id
            expected[trace_id] = (span_id, f"/plans/{n}")

        lines = [
            line
            for line in server.json_lines()
            if line.get("logger") == "kiki_otel.access"
            and str(line.get("path", "")).startswith("/plans/")
        ]
        assert len(lines) == len(expected), server.output()[-2000:]
        assert {line["trace_id"]: (line["span_id"], line["path"]) for line in lines} == expected
        assert all(line["status"] == 200 and line["route"] == "/plans/{plan_id}" for line in lines)

        spans = rx.wait_for(
            lambda: (
                found
                if len(found := [s for s in rx.spans() if s.trace_id in expected]) >= len(expected)
                else []
            ),
            message="every request's span",
        )
        assert {s.trace_id: (s.span_id, s.attributes["url.path"]) for s in spans} == expected
        assert all(s.name == "GET /plans/{plan_id}" for s in spans)
        assert all(s.attributes["http.response.status_code"] == 200 for s in spans)
        records = rx.wait_for(
            lambda: (
                found
                if len(
                    found := [
                        r for r in rx.logs() if r.trace_id in expected and r.attributes.get("path")
                    ]
                )
                >= len(expected)
                else []
            ),
            message="every request's access record",
        )
        assert {r.trace_id: (r.span_id, r.attributes["path"]) for r in records} == expected
