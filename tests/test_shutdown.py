"""The shutdown sequence: readiness flip, cleanups (reverse order, bounded, isolated),
concurrent flush abandoned at the deadline, idempotent, reported in one log line."""

from __future__ import annotations

import asyncio
import json
import os
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


async def test_a_cleanup_that_ignores_its_cancellation_is_left_behind() -> None:
    """A cleanup that catches the cancellation and keeps awaiting (closing a connection on
    cancel) is reported as timed out and left: the cleanups after it and the flush get
    their time. ``asyncio.wait_for`` waited for it, past the whole deadline."""
    ran: list[str] = []
    release = asyncio.Event()
    flushed = OkProvider()
    shutdown, _ = coordinator({"traces": flushed}, cleanup_timeout=0.2, timeout=3.0)
    shutdown.on_shutdown(lambda: ran.append("after it"))

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # "close the connection": takes as long as it takes

    shutdown.on_shutdown(stubborn)
    report = await shutdown.run()
    assert report.timed_out_cleanups == [stubborn.__qualname__]
    assert ran == ["after it"] and report.abandoned == [] and flushed.calls == ["shutdown"]
    release.set()  # let the abandoned task end with the test
    await asyncio.sleep(0)


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


async def test_a_cleanup_raising_cancelled_error_fails_alone() -> None:
    """``task.cancel(); await task`` in a cleanup lets the task's CancelledError out. That is the
    cleanup failing, not the shutdown being cancelled: it is reported as failed, the other
    cleanups still run, every provider is flushed, and a later call gets the same report."""
    traces, logs = OkProvider(), OkProvider()
    ran: list[str] = []
    shutdown, lifecycle = coordinator({"traces": traces, "logs": logs})
    shutdown.on_shutdown(lambda: ran.append("close_db"))

    async def stop_worker() -> None:
        worker = asyncio.ensure_future(asyncio.sleep(60))
        await asyncio.sleep(0)
        worker.cancel()
        await worker

    shutdown.on_shutdown(stop_worker)
    report = await shutdown.run()
    assert report.failed_cleanups == [stop_worker.__qualname__]
    assert ran == ["close_db"]
    assert traces.calls == ["shutdown"] and logs.calls == ["flush", "shutdown"]
    assert lifecycle.state == "stopped"
    assert shutdown.run_sync() is report


async def test_a_cancelled_shutdown_still_flushes_and_keeps_its_report() -> None:
    """Cancelling the shutdown itself (the server giving up) stops the cleanups, but what is
    queued is still flushed, and the atexit ``shutdown()`` returns that run's report rather
    than an empty, "clean" one."""
    traces, logs = OkProvider(), OkProvider()
    ran: list[str] = []
    shutdown, lifecycle = coordinator({"traces": traces, "logs": logs})
    shutdown.on_shutdown(lambda: ran.append("never"))
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.sleep(60)

    shutdown.on_shutdown(hangs)
    task = asyncio.ensure_future(shutdown.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == []
    assert traces.calls == ["shutdown"] and logs.calls == ["flush", "shutdown"]
    assert lifecycle.state == "stopped"
    report = shutdown.run_sync()
    assert report.failed_cleanups == [hangs.__qualname__] and not report.clean
    assert report.flush_s > 0


def test_non_finite_or_negative_timeouts_are_refused() -> None:
    """``shutdown(timeout)`` is user input: NaN, infinity or a negative number used to give a
    half-run shutdown (every cleanup "timed out", or a ValueError from ``Thread.join``), so
    they are refused before anything starts."""
    shutdown, lifecycle = coordinator()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="timeout"):
            shutdown.run_sync(bad)
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(shutdown.run(bad))
    assert lifecycle.state == "ready"


@pytest.mark.parametrize("bad", ["not callable either", None])
def test_on_shutdown_refuses_non_callables(bad: Any) -> None:
    """A non-callable cleanup used to be accepted and only fail at shutdown: it is a
    TypeError when registered, through the public handle too."""
    shutdown, _ = coordinator()
    with pytest.raises(TypeError, match="callable"):
        shutdown.on_shutdown(bad)
    telemetry = kiki_otel.configure(metrics_exporter="none")
    with pytest.raises(TypeError, match="callable"):
        telemetry.on_shutdown(bad)
    assert telemetry.shutdown(1.0).failed_cleanups == []


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


async def run_lifespan(app: Any) -> list[str]:
    """One ASGI lifespan, startup then shutdown (what each ``with TestClient(app)`` does)."""
    messages = asyncio.Queue[dict[str, Any]]()
    sent: list[str] = []
    await messages.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            await messages.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send)
    return sent


async def _django_like(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # as Django's ASGIHandler: no lifespan
        raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")


async def _ignores_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _receives_then_fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("no lifespan here")


@pytest.mark.parametrize("inner", [_django_like, _ignores_lifespan, _receives_then_fails])
async def test_an_app_without_lifespan_gets_kikis_and_its_shutdown(
    memory: Memory, capsys: pytest.CaptureFixture[str], inner: Any
) -> None:
    """An app that raises on the lifespan scope, or returns without a word: the server
    would carry on without lifespan events, and nothing would run the shutdown (uvicorn
    re-raises SIGTERM past the atexit flush). kiki answers the events itself: ready at
    startup, flushed at shutdown."""
    telemetry = kiki_otel.configure()
    app = telemetry.wrap(inner)
    assert await run_lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert telemetry.lifecycle.state == "stopped"
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert "lifecycle.lifespan_for_the_app" in events and "shutdown.completed" in events


async def test_a_failing_startup_the_app_reported_stays_the_apps(memory: Memory) -> None:
    """An app that speaks lifespan and fails its startup (``lifespan.startup.failed``, then
    raises, as Starlette does): its failure reaches the server, kiki does not take over."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        raise ConnectionError("database unreachable")
        yield

    app = FastAPI(lifespan=lifespan)
    kiki_otel.configure(app)
    with pytest.raises(ConnectionError):
        await run_lifespan(app)


async def test_a_lifespan_after_shutdown_warns_once(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first lifespan's end shut telemetry down for good (readiness 503, our providers
    closed), so a second lifespan on the same app (one ``with TestClient(app)`` per test) used
    to run silently without telemetry: it now logs one warning saying what to do."""
    app = FastAPI()
    telemetry = kiki_otel.configure(app)
    await run_lifespan(app)
    assert telemetry.lifecycle.state == "stopped"
    capsys.readouterr()
    for _ in range(2):
        assert await run_lifespan(app) == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    warnings = [l for l in lines if l["event"] == "lifecycle.started_after_shutdown"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "kiki_otel.testing.reset()" in warnings[0]["hint"]
    assert telemetry.lifecycle.state == "stopped"  # not silently re-armed


async def test_a_single_lifespan_does_not_warn(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The normal case (one lifespan per process) logs no such warning."""
    app = FastAPI()
    kiki_otel.configure(app)
    await run_lifespan(app)
    assert "lifecycle.started_after_shutdown" not in capsys.readouterr().out


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


async def test_drain_is_reported_when_lifespan_began_it() -> None:
    """begin() (lifespan.shutdown received) then run() (before shutdown.complete): the
    report carries the drain that begin() waited, not zero."""
    shutdown, lifecycle = coordinator(drain_delay=0.05)
    await shutdown.begin()
    assert lifecycle.state == "stopping"
    report = await shutdown.run()
    assert report.drain_s >= 0.05


async def test_concurrent_runs_share_one_sequence_and_wait_for_it() -> None:
    """Two runs at once: the cleanups run once and both callers get the finished report."""
    calls: list[int] = []
    shutdown, _ = coordinator(drain_delay=0.05)

    async def slow_cleanup() -> None:
        calls.append(1)
        await asyncio.sleep(0.05)

    shutdown.on_shutdown(slow_cleanup)
    first, second = await asyncio.gather(shutdown.run(), shutdown.run())
    assert first is second and calls == [1]
    assert first.cleanups_s > 0 and first.drain_s >= 0.05


def test_run_sync_while_a_loop_shutdown_is_running_waits_for_it() -> None:
    """telemetry.shutdown() from another thread during an ASGI shutdown returns the same,
    finished report instead of a half-filled one."""
    shutdown, _ = coordinator()
    release = threading.Event()
    shutdown.on_shutdown(lambda: release.wait(5))
    reports: list[Any] = []
    runner = threading.Thread(target=lambda: reports.append(asyncio.run(shutdown.run())))
    runner.start()
    time.sleep(0.05)
    threading.Timer(0.1, release.set).start()
    late = shutdown.run_sync()
    runner.join(5)
    assert late is reports[0] and late.cleanups_s >= 0.1


async def test_shutdown_report_logs_are_flushed_last_even_when_traces_hang() -> None:
    """Traces stuck until the deadline: the logs provider still gets its final flush
    (shutdown) in the slice of the deadline kept for it, after the report line."""
    stuck, logs = StuckProvider(), OkProvider()
    shutdown, _ = coordinator({"traces": stuck, "logs": logs}, timeout=0.5)
    try:
        report = await shutdown.run()
    finally:
        stuck.release.set()
    assert report.abandoned == ["traces"]
    assert logs.calls == ["flush", "shutdown"]


async def test_a_sync_cleanup_that_blocks_does_not_hold_the_deadline() -> None:
    """A blocking sync cleanup is abandoned on its daemon thread at cleanup_timeout."""
    shutdown, _ = coordinator(cleanup_timeout=0.1)
    release = threading.Event()
    shutdown.on_shutdown(lambda: release.wait(30))
    try:
        report = await shutdown.run()
    finally:
        release.set()
    assert len(report.timed_out_cleanups) == 1


# (3.12+ warns of a fork in a multi-threaded process: the very case, a prefork master's)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("explicit", [None, "plans-7d9f-x2"])
def test_forked_child_gets_its_own_identity_and_connections(explicit: str | None) -> None:
    """After a fork, a child of a configured process has a new service.instance.id (the
    explicit one's ``<id>-<pid>`` when one was set) and its own process.pid on every
    provider, and its HTTP connection to the collector is closed (in the child only), so it
    never writes into the parent's stream."""
    import http.client
    import socket

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    class Holder:  # stands in for an exporter holding a keep-alive connection
        __module__ = "kiki_otel.test_exporter"

        def __init__(self, conn: http.client.HTTPConnection) -> None:
            self.conn = conn

    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1])
        conn.connect()
        resource = Resource({"service.instance.id": "parent", "process.pid": os.getpid()})
        traces, logs = TracerProvider(resource=resource), LoggerProvider(resource=resource)
        traces._kiki_holder = Holder(conn)  # type: ignore[attr-defined]
        shutdown = ShutdownCoordinator(
            ShutdownSettings(), Lifecycle("ready"), {"traces": traces, "logs": logs}, explicit
        )
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it sees, then leave without cleanup
            seen = {
                "ids": [p.resource.attributes["service.instance.id"] for p in (traces, logs)],
                "pids": [p.resource.attributes["process.pid"] for p in (traces, logs)],
                "pid": os.getpid(),
                "closed": conn.sock is None,
            }
            os.write(write, json.dumps(seen).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        assert child["ids"][0] == child["ids"][1] != "parent"
        if explicit is not None:
            assert child["ids"][0] == f"{explicit}-{child['pid']}"
        assert child["pids"] == [child["pid"], child["pid"]] != [os.getpid()] * 2
        assert child["closed"] and conn.sock is not None  # the parent's stays open
        assert traces.resource.attributes["service.instance.id"] == "parent"
        conn.close()
        del shutdown


async def test_an_abandoned_log_flush_still_shuts_the_log_provider_down() -> None:
    """A log flush that misses the deadline (a dead collector) is abandoned, but the log
    provider is still shut down (not waited for), so its worker thread ends after the
    export in flight instead of living on: one per configure() in a test suite."""

    class SlowLogs:
        def __init__(self) -> None:
            self.release, self.shut = threading.Event(), threading.Event()

        def force_flush(self, timeout_millis: int = 0) -> bool:
            self.release.wait(30)
            return True

        def shutdown(self) -> None:
            self.shut.set()

    logs = SlowLogs()
    shutdown, _ = coordinator({"traces": OkProvider(), "logs": logs}, timeout=0.3)
    try:
        report = await shutdown.run()
        assert report.abandoned == ["logs"]
        assert logs.shut.wait(5)
    finally:
        logs.release.set()


def test_reset_lets_the_configured_telemetry_go() -> None:
    """``testing.reset()`` drops the atexit hook too: it kept every ``Telemetry`` of a test
    suite (providers, threads' owners) alive until the interpreter exited."""
    import gc
    import weakref

    from kiki_otel import testing

    telemetry = kiki_otel.configure(metrics_exporter="none", traces_exporter="none")
    alive = weakref.ref(telemetry)
    del telemetry
    testing.reset(timeout=1.0)
    gc.collect()
    assert alive() is None


def test_a_logging_chain_that_raises_does_not_stop_the_flush(
    receiver: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """Shutdown logs its start and report through the chain; a user's processor that raises
    on every line must not cost the flush: the span still arrives, the report lines go to
    stderr."""
    import structlog

    def broken(_logger: Any, _method: str, _event: Any) -> Any:
        raise RuntimeError("a broken user processor")

    telemetry = kiki_otel.configure(
        service_name="svc",
        exporter_otlp_endpoint=f"http://127.0.0.1:{receiver.http_port}",
        metrics_exporter="none",
    )
    structlog.configure(processors=[broken])
    with telemetry.tracer("test").start_as_current_span("before-shutdown"):
        pass
    report = telemetry.shutdown(5.0)
    assert report.clean
    assert [s.name for s in receiver.wait_for_spans(1)] == ["before-shutdown"]
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["shutdown.started", "shutdown.completed"]
    assert all("a broken user processor" in line["logging_failed"] for line in lines)


async def test_the_report_counts_what_full_export_queues_dropped() -> None:
    """Items dropped from a full export queue while the app ran are in the shutdown report
    (and its line, at warning level): a clean flush at the end does not mean nothing was lost."""
    from kiki_otel import _otlp_http

    _otlp_http._report_full("Span")  # before this instance: not counted
    shutdown, _ = coordinator()
    for _ in range(5):
        _otlp_http._report_full("Log")
    report = await shutdown.run()
    assert report.dropped == {"Log": 5}
    assert not report.clean  # cleanups and flush went well, but telemetry was lost


def test_the_report_counts_what_a_dead_collector_lost(capsys: pytest.CaptureFixture[str]) -> None:
    """Exporters that give up before the deadline (a refused port, a short export timeout)
    lose what they held: the report says so (``lost``, not clean, a warning), where it
    said clean=True before."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    telemetry = kiki_otel.configure(
        exporter_otlp_endpoint=dead, exporter_otlp_timeout=200, shutdown={"timeout": 20.0}
    )
    with telemetry.tracer("t").start_as_current_span("lost"):
        for _ in range(3):
            kiki_otel.get_logger().info("will not arrive")
    report = telemetry.shutdown()
    assert not report.abandoned  # given up before the deadline, not cut off by it
    assert report.lost.get("Span") == 1 and report.lost.get("Log", 0) >= 3
    assert not report.clean
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = [line for line in lines if line["event"] == "shutdown.completed"]
    assert done[0]["level"] == "warning" and done[0]["lost"] == report.lost


async def test_a_server_without_lifespan_is_ready_once_it_serves(memory: Memory) -> None:
    """No lifespan events (``--lifespan off``, a bare ASGI test transport): the first
    request means the server has started, and readiness follows; once shutting down, later
    requests leave it down."""
    import httpx

    app = FastAPI()

    @app.get("/x")
    def x() -> dict[str, str]:
        return {}

    telemetry = kiki_otel.configure(app)
    assert telemetry.lifecycle.state == "starting"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/x")).status_code == 200
        assert telemetry.lifecycle.state == "ready"
        assert (await client.get("/health/ready")).status_code == 200
        telemetry.lifecycle.begin_shutdown()
        assert (await client.get("/x")).status_code == 200
        assert telemetry.lifecycle.state != "ready"
        assert (await client.get("/health/ready")).status_code == 503


def test_exports_abandoned_at_the_deadline_are_aborted() -> None:
    """A hung collector: the span export abandoned at the deadline does not go on waiting
    for the export timeout (30 s here); the exporter threads end within moments, so
    nothing of this telemetry reports into later output (a test suite's next test)."""
    from opentelemetry import _logs, trace

    from tests.support.otlp_receiver import OTLPReceiver

    with OTLPReceiver(mode="hang") as rx:
        telemetry = kiki_otel.configure(
            exporter_otlp_endpoint=rx.http_endpoint,
            exporter_otlp_timeout=30_000,
            metrics_exporter="none",
        )
        tracing: Any = trace.get_tracer_provider()
        logging_: Any = _logs.get_logger_provider()
        spans = tracing._active_span_processor._span_processors[0]
        logs = logging_._multi_log_record_processor._log_record_processors[0]
        workers = [spans._batch_processor._worker_thread, logs._batch_processor._worker_thread]
        with trace.get_tracer("t").start_as_current_span("stuck"):
            pass
        report = telemetry.shutdown(0.5)
        assert "traces" in report.abandoned and rx.wait_for_requests(1, signal="traces")
        for worker in workers:
            worker.join(5.0)
        # allowed: 5 s against the 30 s a hung export would otherwise hold each thread
        assert not any(worker.is_alive() for worker in workers)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_official_exporter_retries_abandoned_at_the_deadline_stop(protocol: str) -> None:
    """A refused collector and the official metrics exporter (the one kiki uses for
    metrics, over HTTP or gRPC): its retries (backoff 1, 2, 4... s up to the 30 s export
    timeout) end once its flush is abandoned at the deadline, instead of reporting into
    later output."""
    from tests.support.server_process import free_port

    telemetry = kiki_otel.configure(
        exporter_otlp_endpoint=f"http://127.0.0.1:{free_port()}",  # nothing listens
        exporter_otlp_protocol=protocol,
        exporter_otlp_timeout=30_000,
        traces_exporter="none",
        logs_exporter="none",
    )
    telemetry.meter("t").create_counter("c").add(1)
    report = telemetry.shutdown(0.5)
    assert "metrics" in report.abandoned

    def flushing() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "kiki-otel-flush-metrics"]

    for thread in flushing():  # (it may have ended already)
        thread.join(5.0)
    # allowed: 5 s against the ~31 s of retries the abandoned flush would otherwise run
    assert not flushing()


async def test_before_flush_work_runs_before_the_flush_and_its_failure_costs_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What must reach the exporters first (requests waiting to be finished) runs before
    the providers flush, after the cleanups; one that raises is logged and the flush
    still runs, as do the others."""
    order: list[str] = []

    class Recording(OkProvider):
        def shutdown(self) -> None:
            order.append("flush")

    shutdown, _ = coordinator({"traces": Recording()})
    shutdown.on_shutdown(lambda: order.append("cleanup"))

    def broken() -> None:
        order.append("broken")
        raise RuntimeError("finishing failed")

    shutdown.before_flush(broken)
    shutdown.before_flush(lambda: order.append("finished"))
    report = await shutdown.run()
    assert order == ["cleanup", "broken", "finished", "flush"]
    assert report.abandoned == []
    assert "shutdown.before_flush_failed" in capsys.readouterr().out
