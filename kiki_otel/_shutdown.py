"""Graceful shutdown: readiness flip, drain, user cleanups, then flush every exporter.

The SDK's own ``shutdown()`` has no reliable deadline (a hung collector can hold it for the
exporter timeout times its retries), so each provider is flushed on its own daemon thread,
concurrently, and abandoned at our deadline. Logs about the shutdown itself are written
after traces and metrics are flushed and are flushed last.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._lifecycle import Lifecycle
from ._logging import get_logger
from ._settings import ShutdownSettings

__all__ = ["Cleanup", "ShutdownCoordinator", "ShutdownReport"]

Cleanup = Callable[[], Awaitable[object]] | Callable[[], object]
log = get_logger("kiki_otel.shutdown")


@dataclass
class ShutdownReport:
    """What happened, for the final log line and for callers of ``shutdown()``."""

    drain_s: float = 0.0
    cleanups_s: float = 0.0
    flush_s: float = 0.0
    failed_cleanups: list[str] = field(default_factory=list)
    timed_out_cleanups: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    """Providers still flushing at the deadline: what they held may be lost."""

    @property
    def clean(self) -> bool:
        """True if nothing failed, timed out or was abandoned."""
        return not (self.failed_cleanups or self.timed_out_cleanups or self.abandoned)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _flush_in_thread(name: str, work: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("shutdown.flush_failed", provider=name)

    thread = threading.Thread(target=run, name=f"kiki-otel-flush-{name}", daemon=True)
    thread.start()
    return thread


def _join_until(threads: dict[str, threading.Thread], deadline: float) -> list[str]:
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, thread in threads.items() if thread.is_alive()]


class ShutdownCoordinator:
    """Runs the shutdown sequence once; later calls return the first call's report."""

    def __init__(
        self, settings: ShutdownSettings, lifecycle: Lifecycle, providers: dict[str, Any]
    ) -> None:
        self._settings = settings
        self._lifecycle = lifecycle
        self._providers = providers  # {"traces": TracerProvider, ...}: only the ones we own
        self._cleanups: list[Cleanup] = []
        self._report: ShutdownReport | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    def on_shutdown(self, fn: Cleanup) -> Cleanup:
        """Register a cleanup (sync or async); they run in reverse order of registration."""
        self._cleanups.append(fn)
        return fn

    async def begin(self) -> float:
        """Flip readiness to 503 and wait the drain delay; returns the seconds drained."""
        if not self._lifecycle.begin_shutdown():
            return 0.0
        self._started = time.monotonic()
        log.info("shutdown.started", drain_delay_s=self._settings.drain_delay)
        if self._settings.drain_delay:
            await asyncio.sleep(self._settings.drain_delay)
        return time.monotonic() - self._started

    async def run(self, timeout: float | None = None) -> ShutdownReport:
        """The whole sequence on the running loop (ASGI lifespan or ``ashutdown``)."""
        drained = await self.begin()
        with self._lock:
            if self._report is not None:
                return self._report
            self._report = report = ShutdownReport(drain_s=drained)
        deadline = time.monotonic() + (timeout or self._settings.timeout)
        start = time.monotonic()
        await self._run_cleanups(report, deadline)
        report.cleanups_s = time.monotonic() - start
        flush_start = time.monotonic()
        await asyncio.to_thread(self._flush, report, deadline, flush_start)
        self._lifecycle.mark_stopped()
        return report

    async def _run_cleanups(self, report: ShutdownReport, deadline: float) -> None:
        for fn in reversed(self._cleanups):
            budget = min(self._settings.cleanup_timeout, deadline - time.monotonic())
            if budget <= 0:
                report.timed_out_cleanups.append(_name(fn))
                continue
            try:
                if inspect.iscoroutinefunction(fn):
                    await asyncio.wait_for(fn(), budget)
                else:
                    result = await asyncio.wait_for(asyncio.to_thread(fn), budget)
                    if inspect.isawaitable(result):
                        await asyncio.wait_for(result, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                report.timed_out_cleanups.append(_name(fn))
                log.error("shutdown.cleanup_timeout", cleanup=_name(fn), timeout_s=round(budget, 3))
            except Exception:
                report.failed_cleanups.append(_name(fn))
                log.exception("shutdown.cleanup_failed", cleanup=_name(fn))

    def _flush(self, report: ShutdownReport, deadline: float, flush_start: float) -> None:
        logs: Any = self._providers.get("logs")

        def flush_logs() -> object:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            return logs.force_flush(remaining_ms)

        first = {
            name: _flush_in_thread(name, provider.shutdown)
            for name, provider in self._providers.items()
            if name != "logs"
        }
        if logs is not None:  # flush what is queued now; the final report line goes after
            first["logs"] = _flush_in_thread("logs", flush_logs)
        report.abandoned = _join_until(first, deadline)
        report.flush_s = time.monotonic() - flush_start
        event = log.info if report.clean else log.warning
        event(
            "shutdown.completed",
            drain_s=round(report.drain_s, 3),
            cleanups_s=round(report.cleanups_s, 3),
            flush_s=round(report.flush_s, 3),
            failed_cleanups=report.failed_cleanups,
            timed_out_cleanups=report.timed_out_cleanups,
            abandoned=report.abandoned,
        )
        if logs is not None and "logs" not in report.abandoned:
            last = _join_until({"logs": _flush_in_thread("logs", logs.shutdown)}, deadline)
            report.abandoned.extend(last)

    def run_sync(self, timeout: float | None = None) -> ShutdownReport:
        """For programs without an event loop (workers, scripts) and the atexit fallback.

        Async cleanups run on a private loop in a helper thread, so this is safe to call
        from inside a running loop too (though ``await telemetry.ashutdown()`` is better there).
        """
        if self._report is not None:
            return self._report
        result: list[ShutdownReport] = []
        thread = threading.Thread(
            target=lambda: result.append(asyncio.run(self.run(timeout))), name="kiki-otel-shutdown"
        )
        thread.start()
        thread.join((timeout or self._settings.timeout) + 1.0)
        return result[0] if result else (self._report or ShutdownReport(abandoned=["shutdown"]))
