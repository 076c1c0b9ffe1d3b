"""Graceful shutdown: readiness flip, drain, user cleanups, then flush every exporter.

The SDK's own ``shutdown()`` has no reliable deadline (a hung collector can hold it for the
exporter timeout times its retries), so each provider is flushed on its own daemon thread,
concurrently, and abandoned at our deadline. Logs about the shutdown itself (the report
line included) are flushed last, in a slice of the deadline kept for them. kiki's own
exports still running for an abandoned provider are then aborted.

Work leaves the event loop on plain daemon threads, never ``asyncio.to_thread``: the
atexit fallback runs after the interpreter has closed the default executor, and a cleanup
that hangs must not keep the process alive. Where Python no longer starts threads (3.12+,
at exit) the work goes to threads started ahead (:mod:`._spare_threads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _spare_threads
from ._fork import after_fork_in_child, drop_inherited_connections, new_identity, reachable
from ._lifecycle import Lifecycle
from ._logging import OwnLogger, check_logging
from ._otlp_client import RetryingClient
from ._otlp_http import dropped_items, lost_items
from ._settings import ShutdownSettings

__all__ = ["Cleanup", "ShutdownCoordinator", "ShutdownReport", "require_callable"]

Cleanup = Callable[[], Awaitable[object]] | Callable[[], object]
CleanupT = TypeVar("CleanupT", bound=Callable[[], object])
"""A cleanup's own type, which registering it keeps (``on_shutdown`` as a decorator)."""
T = TypeVar("T")
log = OwnLogger("kiki_otel.shutdown")

_FINAL_LOGS_SHARE = 0.1
"""Share of the deadline kept for flushing the shutdown's own log lines last..."""
_FINAL_LOGS_MAX_S = 0.5
"""...but never more than this many seconds."""
# Threads the sequence may hold at once besides the cleanups' (see _spare_threads): its own
# loop, the flush, a flush per provider, the final logs, the abort and a waiting caller.
_SEQUENCE_THREADS = 8


@dataclass
class ShutdownReport:
    """What happened, for the final log line and for callers of ``shutdown()``."""

    drain_s: float = 0.0
    cleanups_s: float = 0.0
    flush_s: float = 0.0
    failed_cleanups: list[str] = field(default_factory=list)
    timed_out_cleanups: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    """Signals whose provider was still flushing at the deadline: what they held may be lost."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Items dropped from a full export queue while the app ran ("Span", "Log": count)."""
    lost: dict[str, int] = field(default_factory=dict)
    """Items kiki's exporters failed to deliver while the app ran, the final flush's
    included ("Span", "Log": count): a collector down, refusing, or slower than the export
    timeout. (Metrics go through the SDK's exporter, which logs its own failures.)"""

    @property
    def clean(self) -> bool:
        """True if nothing failed, timed out or was abandoned, dropped or lost."""
        return not (
            self.failed_cleanups
            or self.timed_out_cleanups
            or self.abandoned
            or self.dropped
            or self.lost
        )


def _since(before: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    """The counts that grew since ``before``, by how much."""
    return {k: n - before.get(k, 0) for k, n in now.items() if n > before.get(k, 0)}


def require_callable(fn: object, what: str) -> None:
    """Refuse a non-callable cleanup or check when it is registered.

    Otherwise it fails only when it finally runs (at shutdown, or on every probe as an
    unhealthy check), far from the mistake.
    """
    if callable(fn):
        return
    hint = " (pass the function, not the result of calling it)" if inspect.isawaitable(fn) else ""
    raise TypeError(f"{what} must be callable, got {type(fn).__name__}{hint}")


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


async def _within(awaitable: Awaitable[T], budget: float) -> T:
    """``await awaitable`` for at most ``budget`` seconds, never waiting for it to stop.

    ``asyncio.wait_for`` cancels on timeout and then waits for the task to end: a cleanup
    that catches the cancellation and awaits again (closing a connection, say) held the
    shutdown past its deadline and was not even reported. Here it is cancelled and left,
    and TimeoutError is raised at once.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=budget)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # so asyncio does not log "exception was never retrieved"


async def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` on a new daemon thread and await its result (no executor needed)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled: the caller gave up waiting
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # loop closed: an abandoned cleanup ended late
            loop.call_soon_threadsafe(settle, result, error)

    _spare_threads.start(run, f"kiki-otel-{name}")
    return await future


def _flush_in_thread(name: str, work: Callable[[], object]) -> threading.Event:
    """Run ``work`` on a thread of its own; the event is set when it has ended."""

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("shutdown.flush_failed", provider=name)

    return _spare_threads.start(run, f"kiki-otel-flush-{name}")


def _official_retry_events() -> dict[type, str]:
    """The official OTLP exporters' classes and the event that ends their retry loop.

    Setting it is what their ``shutdown()`` does first: the backoff wait returns at once
    and the export gives up (``shutdown()`` itself is left to the provider's own call).
    """
    events: dict[type, str] = {}
    try:
        from opentelemetry.exporter.otlp.common.http import _OTLPHTTPClient

        events[_OTLPHTTPClient] = "_shutdown_event"
    except ImportError:  # another exporter release: its retries run to their timeout
        pass
    try:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin

        events[OTLPExporterMixin] = "_shutdown_in_progress"
    except ImportError:  # gRPC exporter not installed, or moved
        pass
    return events


def _abort_exports(providers: list[Any]) -> None:
    """Abort the exports still running under ``providers``: retries end, sockets close.

    Past the deadline an abandoned flush would otherwise go on retrying a dead or hung
    collector until the export timeout, in a process that is not always about to exit (a
    test suite's ``testing.reset()``): its failure then surfaced in some later output.
    kiki's own clients are closed (an attempt in flight too); the official exporters (the
    metrics', or all with ``KIKI_OTEL_EXPORTER=official``) stop retrying, and an attempt
    in flight ends at its own timeout.
    """
    official = _official_retry_events()
    for found in reachable(providers, (RetryingClient, *official)):
        if isinstance(found, RetryingClient):
            found.close()
            continue
        for kind, name in official.items():
            event = getattr(found, name, None) if isinstance(found, kind) else None
            if isinstance(event, threading.Event):
                event.set()


def _join_until(flushes: dict[str, threading.Event], deadline: float) -> list[str]:
    """Wait for the flushes until ``deadline``; the names of those still running."""
    for ended in flushes.values():
        ended.wait(max(0.0, deadline - time.monotonic()))
    return [name for name, ended in flushes.items() if not ended.is_set()]


def _cancelling() -> bool:
    """True if the running task itself has been asked to stop (not a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _wait_event(event: threading.Event, timeout: float) -> None:
    if not event.is_set():  # set from whichever thread or loop runs the first call
        await _in_thread(lambda: event.wait(timeout), "wait")


class ShutdownCoordinator:
    """Runs the shutdown sequence once; later or concurrent calls get the first call's report.

    In a child forked after ``configure()`` (gunicorn ``--preload``) it gives the providers
    a new identity and drops inherited collector connections (see :mod:`._fork`).
    """

    def __init__(
        self,
        settings: ShutdownSettings,
        lifecycle: Lifecycle,
        providers: dict[str, Any],
        instance: str | None = None,
    ) -> None:
        self._settings = settings
        self._instance = instance  # the explicit service.instance.id, a forked child's base
        self._lifecycle = lifecycle
        self._providers = providers  # {"traces": TracerProvider, ...}: only the ones we own
        # the report counts this instance's drops and losses
        self._dropped_before, self._lost_before = dropped_items(), lost_items()
        self._cleanups: list[Cleanup] = []
        self._before_flush: list[Callable[[], None]] = []
        self._init_state()
        _spare_threads.keep(_SEQUENCE_THREADS)
        after_fork_in_child(self._after_fork)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._begun = False
        self._drain_s = 0.0
        self._drained = threading.Event()
        self._report: ShutdownReport | None = None
        self._done = threading.Event()

    def _after_fork(self) -> None:
        self._init_state()
        # Never break the child: at worst it exports as the parent would. No logging here,
        # the fork may have happened while another thread held the output's lock.
        with contextlib.suppress(Exception):
            new_identity(self._providers.values(), self._instance)
            drop_inherited_connections(self._providers.values())
            _spare_threads.keep(_SEQUENCE_THREADS + len(self._cleanups))

    def on_shutdown(self, fn: CleanupT) -> CleanupT:
        """Register a cleanup (sync or async); they run in reverse order of registration."""
        require_callable(fn, "on_shutdown() cleanup")
        self._cleanups.append(fn)
        _spare_threads.keep(_SEQUENCE_THREADS + len(self._cleanups))
        return fn

    def before_flush(self, fn: Callable[[], None]) -> None:
        """Register telemetry that must reach the exporters before they flush.

        The requests whose span end and access line still wait to be finished with others'.
        """
        self._before_flush.append(fn)

    async def begin(self) -> float:
        """Flip readiness to 503 and wait the drain delay; returns the seconds drained.

        A second call waits for the first one's drain to end.
        """
        with self._lock:
            first, self._begun = not self._begun, True
        if not first:
            await _wait_event(self._drained, self._settings.drain_delay + 1.0)
            return self._drain_s
        started = time.monotonic()
        try:
            self._lifecycle.begin_shutdown()
            check_logging()  # a script has no lifespan start: a replaced config, named here
            log.info("shutdown.started", drain_delay_s=self._settings.drain_delay)
            if self._settings.drain_delay:
                await asyncio.sleep(self._settings.drain_delay)
        finally:
            self._drain_s = time.monotonic() - started
            self._drained.set()
        return self._drain_s

    async def run(self, timeout: float | None = None) -> ShutdownReport:
        """The whole sequence on the running loop (ASGI lifespan or ``ashutdown``).

        If this task is cancelled the cleanups stop there, but the flush still runs (it is
        what keeps the queued telemetry) and later calls get this run's report.
        """
        budget = self._budget(timeout)
        with self._lock:
            report, first = self._report, self._report is None
            if report is None:
                self._report = report = ShutdownReport()
        if not first:
            await _wait_event(self._done, self._settings.drain_delay + budget + 1.0)
            return report
        deadline: float | None = None
        try:
            report.drain_s = await self.begin()
            deadline = time.monotonic() + budget
            start = time.monotonic()
            try:
                await self._run_cleanups(report, deadline)
            finally:
                report.cleanups_s = time.monotonic() - start
        finally:
            try:
                if deadline is None:  # cancelled during the drain
                    deadline = time.monotonic() + budget
                for finish in self._before_flush:
                    try:
                        finish()  # each request's own failure is reported apart
                    except Exception:  # and nothing of it may cost the flush
                        log.exception("shutdown.before_flush_failed")
                reserve = min(_FINAL_LOGS_MAX_S, _FINAL_LOGS_SHARE * budget)
                await _in_thread(lambda: self._flush(report, deadline, reserve), "flush")
                self._lifecycle.mark_stopped()
            finally:
                self._done.set()
        return report

    def _budget(self, timeout: float | None) -> float:
        """The caller's ``timeout`` or the configured one; NaN, inf and <= 0 are refused."""
        if timeout is None:
            return self._settings.timeout
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"shutdown timeout must be a finite number > 0 seconds, got {timeout}")
        return timeout

    async def _run_cleanups(self, report: ShutdownReport, deadline: float) -> None:
        for fn in reversed(self._cleanups):
            budget = min(self._settings.cleanup_timeout, deadline - time.monotonic())
            if budget <= 0:
                report.timed_out_cleanups.append(_name(fn))
                continue
            try:
                if inspect.iscoroutinefunction(fn):
                    await _within(fn(), budget)
                else:
                    result = await _within(_in_thread(fn, "cleanup"), budget)
                    if inspect.isawaitable(result):
                        await _within(result, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                report.timed_out_cleanups.append(_name(fn))
                log.error("shutdown.cleanup_timeout", cleanup=_name(fn), timeout_s=round(budget, 3))
            except asyncio.CancelledError:
                # Usually the cleanup's own ``task.cancel(); await task`` leaking out: a failed
                # cleanup. Only a cancellation of this task ends them (the flush still runs).
                report.failed_cleanups.append(_name(fn))
                log.exception("shutdown.cleanup_failed", cleanup=_name(fn))
                if _cancelling():
                    raise
            except Exception:
                report.failed_cleanups.append(_name(fn))
                log.exception("shutdown.cleanup_failed", cleanup=_name(fn))

    def _flush(self, report: ShutdownReport, deadline: float, reserve: float) -> None:
        """Traces and metrics shut down, queued logs flushed; then the report; then logs."""
        flush_start = time.monotonic()
        logs: Any = self._providers.get("logs")
        first_deadline = deadline - reserve if logs is not None else deadline

        def flush_logs() -> object:
            remaining_ms = max(1, int((first_deadline - time.monotonic()) * 1000))
            return logs.force_flush(remaining_ms)

        first = {
            name: _flush_in_thread(name, provider.shutdown)
            for name, provider in self._providers.items()
            if name != "logs"
        }
        if logs is not None:  # flush what is queued now; the final report line goes after
            first["logs"] = _flush_in_thread("logs", flush_logs)
        report.abandoned = _join_until(first, first_deadline)
        report.flush_s = time.monotonic() - flush_start
        report.dropped = _since(self._dropped_before, dropped_items())
        report.lost = _since(self._lost_before, lost_items())
        event = log.info if report.clean else log.warning
        event(
            "shutdown.completed",
            drain_s=round(report.drain_s, 3),
            cleanups_s=round(report.cleanups_s, 3),
            flush_s=round(report.flush_s, 3),
            failed_cleanups=report.failed_cleanups,
            timed_out_cleanups=report.timed_out_cleanups,
            abandoned=report.abandoned,
            dropped=report.dropped,
            lost=report.lost,
        )
        if logs is not None and "logs" in report.abandoned:
            # Its flush ran out of time: not waited for, but still shut down, so its worker
            # thread ends after the export in flight instead of living on (a thread per
            # configure() in a test suite without a collector).
            _flush_in_thread("logs", logs.shutdown)
        elif logs is not None:
            last = _join_until({"logs": _flush_in_thread("logs", logs.shutdown)}, deadline)
            if last:  # only stdout still hears this: the report line may not be exported
                report.abandoned.extend(last)
                log.warning("shutdown.final_logs_abandoned", abandoned=last)
        stuck = [self._providers[name] for name in report.abandoned if name in self._providers]
        if stuck:  # not waited for: close() waits up to a second for an aborted attempt
            _flush_in_thread("abort", lambda: _abort_exports(stuck))

    def run_sync(self, timeout: float | None = None) -> ShutdownReport:
        """For programs without an event loop (workers, scripts) and the atexit fallback.

        Async cleanups run on a private loop in a helper thread, so this is safe to call
        from inside a running loop too (though ``await telemetry.ashutdown()`` is better there).
        """
        if self._done.is_set() and self._report is not None:
            return self._report
        budget = self._budget(timeout)
        result: list[ShutdownReport] = []
        ended = _spare_threads.start(
            lambda: result.append(asyncio.run(self.run(timeout))), "kiki-otel-shutdown"
        )
        ended.wait(self._settings.drain_delay + budget + 1.0)
        return result[0] if result else (self._report or ShutdownReport(abandoned=["shutdown"]))
