"""The shutdown sequence: readiness flip, cleanups (reverse order, bounded, isolated),
concurrent flush abandoned at the deadline, idempotent, reported in one log line."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

import kiki_otel
from kiki_otel._lifecycle import Lifecycle
from kiki_otel._settings import ShutdownSettings
from kiki_otel._shutdown import ShutdownCoordinator
from tests.conftest import Memory


class StuckProvider:
    """A provider whose flush/shutdown blocks, like the SDK's against a hung collector."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def shutdown(self) -> None:
        self.release.wait(30)

    def force_flush(self, timeout_millis: int = 0) -> bool:
        self.release.wait(30)
        return True


class OkProvider:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def force_flush(self, timeout_millis: int = 0) -> bool:
        self.calls.append("flush")
        return True


def coordinator(
    providers: dict[str, Any] | None = None, **settings: float
) -> tuple[ShutdownCoordinator, Lifecycle]:
    lifecycle = Lifecycle("ready")
    return ShutdownCoordinator(ShutdownSettings(**settings), lifecycle, providers or {}), lifecycle


async def test_cleanups_run_in_reverse_order_sync_and_async() -> None:
    """Registered cleanups (sync and async) run last-registered first."""
    order: list[str] = []
    shutdown, _ = coordinator()
    shutdown.on_shutdown(lambda: order.append("first"))

    async def second() -> None:
        order.append("second")

    shutdown.on_shutdown(second)
    report = await shutdown.run()
    assert order == ["second", "first"]
    assert report.clean


async def test_failing_and_hanging_cleanups_do_not_block_the_rest() -> None:
    """A cleanup that raises is logged; one that hangs is cut at cleanup_timeout; others run."""
    ran: list[str] = []
    shutdown, _ = coordinator(cleanup_timeout=0.2, timeout=5.0)
    shutdown.on_shutdown(lambda: ran.append("survivor"))

    async def hangs() -> None:
        await asyncio.sleep(60)

    def raises() -> None:
        raise RuntimeError("pool already closed")

    shutdown.on_shutdown(hangs)
    shutdown.on_shutdown(raises)
    report = await shutdown.run()
    assert ran == ["survivor"]
    assert report.failed_cleanups == [raises.__qualname__]
    assert report.timed_out_cleanups == [hangs.__qualname__]


async def test_readiness_flips_before_cleanups() -> None:
    """The lifecycle is 'stopping' (readiness 503) by the time the first cleanup runs."""
    seen: list[str] = []
    shutdown, lifecycle = coordinator()
    shutdown.on_shutdown(lambda: seen.append(lifecycle.state))
    await shutdown.run()
    assert seen == ["stopping"] and lifecycle.state == "stopped"


async def test_hung_provider_is_abandoned_at_the_deadline() -> None:
    """A provider stuck in flush is abandoned at the deadline; healthy ones still flushed."""
    stuck, ok = StuckProvider(), OkProvider()
    shutdown, _ = coordinator({"traces": stuck, "metrics": ok, "logs": OkProvider()}, timeout=0.3)
    try:
        report = await shutdown.run()
    finally:
        stuck.release.set()
    assert report.abandoned == ["traces"]
    assert ok.calls == ["shutdown"]
    assert not report.clean


async def test_shutdown_is_idempotent() -> None:
    """A second run returns the first report and runs nothing again."""
    calls: list[int] = []
    shutdown, _ = coordinator()
    shutdown.on_shutdown(lambda: calls.append(1))
    first = await shutdown.run()
    second = await shutdown.run()
    assert first is second and calls == [1]


def test_sync_shutdown_for_scripts(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """telemetry.shutdown() without an event loop runs async cleanups and logs a report."""
    telemetry = kiki_otel.configure()
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    telemetry.on_shutdown(close)
    report = telemetry.shutdown()
    assert closed == [True] and report.clean
    assert telemetry.shutdown() is report
    events = [
        json.loads(l)["event"] for l in capsys.readouterr().out.splitlines() if l.startswith("{")
    ]
    assert "shutdown.completed" in events


async def test_lifespan_keeps_user_startup_and_shutdown(memory: Memory) -> None:
    """configure(app) wraps the lifespan: the user's own startup/shutdown still run, then our
    cleanups; readiness is 'ready' only between startup and shutdown."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        events.append("user-startup")
        yield
        events.append("user-shutdown")

    app = FastAPI(lifespan=lifespan)
    telemetry = kiki_otel.configure(app)
    telemetry.on_shutdown(lambda: events.append(f"cleanup-while-{telemetry.lifecycle.state}"))
    assert telemetry.lifecycle.state == "starting"
    messages = asyncio.Queue[dict[str, Any]]()
    sent: list[str] = []
    await messages.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, Any]:
        return await messages.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            events.append(f"ready={telemetry.lifecycle.ready}")
            await messages.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["user-startup", "ready=True", "user-shutdown", "cleanup-while-stopping"]
    assert telemetry.lifecycle.state == "stopped"


def test_deadline_holds_with_dead_collector(capsys: pytest.CaptureFixture[str]) -> None:
    """Exporters pointed at a closed port: shutdown returns within the deadline (+ margin)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    telemetry = kiki_otel.configure(exporter_otlp_endpoint=dead, shutdown={"timeout": 1.0})
    with telemetry.tracer("t").start_as_current_span("lost"):
        kiki_otel.get_logger().info("will not arrive")
    started = time.monotonic()
    report = telemetry.shutdown()
    assert report.flush_s <= 1.0 + 0.5  # allowed: the deadline is the behaviour under test
    assert time.monotonic() - started < 3.0  # allowed: bound, not a benchmark
