"""Request-thread CPU of kiki's ASGI layers alone, around a two-message ASGI app.

``python -m bench.middleware [bare|kiki] [N]`` sends N GET requests (with a matched-route
template in the scope, as Starlette leaves it) through ``configure().wrap(app)`` on one event
loop, idling in the selector every 64 requests like ``bench.inprocess``, and prints the
event-loop thread's CPU per request and the whole process's (exporter threads included).
No FastAPI: what is left is kiki's own request path. Its settings come from the environment
(``OTEL_*`` / ``KIKI_OTEL_*``), so switching signals off one by one splits the cost, e.g.
``OTEL_LOGS_EXPORTER=none`` or ``KIKI_OTEL_HTTP__ACCESS_LOG=false``. Log lines go to an
in-memory buffer; OTLP goes to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default: a discard receiver
on 127.0.0.1:4318, ``python -m tests.support.otlp_receiver --discard``).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from typing import Any

BURST = 64


class _Route:
    path = "/items/{item_id}"


async def _tiny(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    return None


async def _drive(app: Any, n: int) -> None:
    from bench.inprocess import _scope

    route = _Route()
    for i in range(n):
        scope = _scope(b"/items/%d" % (i % 100))
        scope["route"] = route
        await app(scope, _receive, _send)
        if i % BURST == BURST - 1:
            await asyncio.sleep(0.0005)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "kiki"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    sys.stdout = io.TextIOWrapper(io.BytesIO(), write_through=True)
    app: Any = _tiny
    if mode == "kiki":
        import kiki_otel

        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        app = kiki_otel.configure(service_name="bench", exporter_otlp_endpoint=endpoint).wrap(app)
    elif mode != "bare":
        raise SystemExit(f"unknown mode {mode!r}: bare or kiki")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_drive(app, 2000))  # warm up: caches, first-use paths
    thread0, process0 = time.thread_time(), time.process_time()
    loop.run_until_complete(_drive(app, n))
    thread, process = time.thread_time() - thread0, time.process_time() - process0
    sys.__stderr__.write(
        f"{mode}: request thread {thread / n * 1e6:.1f} us/request, "
        f"process {process / n * 1e6:.1f} us/request\n"
    )
    os._exit(0)  # skip the shutdown flush: not what is measured


if __name__ == "__main__":
    main()
