"""The health registry: dependency checks run concurrently, single-flight and cached.

Probes must be cheap and must never hurt the dependency they look at, so every check runs
concurrently with the others, bounded by its own timeout, single-flight (however many probes
arrive, one run per check is in flight) and cached for its TTL. Synchronous checks run on a
small bounded executor. In background mode a loop refreshes every check on an interval and
probes only read the snapshot, which turns unhealthy (``stale``) past ``max_staleness``.

Nothing a check raises reaches the output: the body names the exception *class* only, the
detail (credentials scrubbed) goes to the log on status changes.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from ._health_checks import BuiltCheck, CheckFailed, http_check, redis_check, scrub, sql_check
from ._health_metrics import HealthMetrics
from ._health_model import CheckResult, HealthReport, HealthStatus, overall_status
from ._http_client import HEALTH_PROBE
from ._json import safe_repr
from ._lifecycle import Lifecycle
from ._logging import OwnLogger
from ._settings import HealthSettings, check_endpoint
from ._shutdown import require_callable

if TYPE_CHECKING:
    import redis.asyncio
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["CheckFailed", "CheckResult", "HealthRegistry", "HealthReport", "HealthStatus"]

log = OwnLogger("kiki_otel.health")

_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,64}")
# Checks must not produce spans or propagate trace headers: health endpoints are excluded
# from traces, so their children would be orphan root spans on every probe.
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY


@dataclass(eq=False)
class _Check:
    """A registered check and its mutable state (last result, the run in flight)."""

    name: str
    built: BuiltCheck
    critical: bool
    timeout: float
    ttl: float
    is_async: bool
    last: CheckResult | None = None
    inflight: asyncio.Task[CheckResult] | None = None
    thread: Future[object] | None = None
    """A synchronous call still running in its worker; never start a second one."""


def _is_async(fn: Callable[[], object]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - async __call__ on a callable object
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


_MISSING = object()


def _interpret(value: object) -> tuple[HealthStatus, str | None, str | None]:
    """Map what a check returned to (status, reason, detail).

    Honoured: a :class:`HealthStatus` or a status word (``_STATUS_NAMES``, any case),
    ``False``, and the ``status`` of a mapping or an object the check returns (the seed
    kit's ``DependencyHealth``, a dict, a pydantic model), where a number is an HTTP status.
    A ``status`` that is none of these is unhealthy: a check that says how it is must not be
    read as healthy. Anything else (None, True, "PONG", a row) is healthy: returning is
    healthy.
    """
    if value is False:
        return HealthStatus.UNHEALTHY, "reported", None
    if isinstance(value, str | bool) or value is None:
        named = _named(value)
        return named, _reported(named), None
    status = _field(value, "status")
    if status is _MISSING:
        return HealthStatus.HEALTHY, None, None
    named, reason, detail = _status_field(status)
    if named is not HealthStatus.HEALTHY:
        detail = _said(value) or detail
    return named, reason, detail


def _field(value: object, name: str) -> object:
    """A mapping's item or an object's attribute, ``_MISSING`` when it has none.

    A property that raises is none: the object says nothing usable.
    """
    if isinstance(value, Mapping):
        return value.get(name, _MISSING)
    try:
        return getattr(value, name, _MISSING)
    except Exception:
        return _MISSING


_SAID_FIELDS = ("error", "error_message", "message", "output")
"""Where a returned object says what is wrong: the seed kit's ``error``, health+json's
``output``, common ``message`` spellings."""


def _said(value: object) -> str | None:
    """What an unhealthy returned object says is wrong, for the status-change log line."""
    for name in _SAID_FIELDS:
        text = _field(value, name)
        if isinstance(text, str) and text.strip():
            return scrub(text.strip())[:300]
    return None


def _named(value: object) -> HealthStatus:
    """A status word ("unhealthy", "DOWN", a HealthStatus) as a status; else healthy."""
    if isinstance(value, str):
        return _STATUS_NAMES.get(value.lower(), HealthStatus.HEALTHY)
    return HealthStatus.HEALTHY


def _reported(status: HealthStatus) -> str | None:
    return None if status is HealthStatus.HEALTHY else "reported"


def _status_field(status: object) -> tuple[HealthStatus, str | None, str | None]:
    """A returned object's own ``status``: a name, an enum of names, a bool or an HTTP code."""
    if isinstance(status, enum.Enum) and not isinstance(status, HealthStatus):
        status = status.value
    if isinstance(status, bool):
        return (
            (HealthStatus.HEALTHY, None, None)
            if status
            else (HealthStatus.UNHEALTHY, "reported", None)
        )
    if isinstance(status, int):
        if 200 <= status < 400:
            return HealthStatus.HEALTHY, None, None
        return HealthStatus.UNHEALTHY, "reported", f"the check returned status {status}"
    if isinstance(status, str) and status.lower() in _STATUS_NAMES:
        named = _STATUS_NAMES[status.lower()]
        return named, _reported(named), None
    return _unknown(status)


def _unknown(status: object) -> tuple[HealthStatus, str | None, str | None]:
    shown = scrub(safe_repr(status))[:100]
    return HealthStatus.UNHEALTHY, "unknown_status", f"the check returned status {shown}"


_STATUS_NAMES = {
    **dict.fromkeys(("healthy", "ok", "up", "pass"), HealthStatus.HEALTHY),
    **dict.fromkeys(("degraded", "warn"), HealthStatus.DEGRADED),
    **dict.fromkeys(("unhealthy", "down", "fail", "error"), HealthStatus.UNHEALTHY),
}
"""Status words, lower case: ours, and health+json's (pass/warn/fail) and Spring's (UP/DOWN)."""


def _text(exc: BaseException) -> str:
    """``str(exc)``, which is user code and may raise: the probe must still get a result."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "never retrieved"


class HealthRegistry:
    """The checks of one service; the core builds it in ``configure()`` and mounts endpoints."""

    def __init__(
        self,
        *,
        settings: HealthSettings,
        service_name: str,
        service_version: str | None,
        meter_provider: MeterProvider,
        lifecycle: Lifecycle,
    ) -> None:
        self._settings = settings
        self._service = service_name
        self._version = service_version
        self.lifecycle = lifecycle
        self._checks: dict[str, _Check] = {}
        self._started = time.monotonic()
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._background: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None  # non-critical, for readiness
        self._pending_close: list[Callable[[], Awaitable[None]]] = []
        self._last_overall: HealthStatus | None = None
        self._closed = False
        self._metrics = HealthMetrics.install(meter_provider, self)

    # -- registration -------------------------------------------------------------------

    def add_http(
        self,
        name: str,
        url: str,
        *,
        critical: bool = True,
        timeout: float | None = None,
        ttl: float | None = None,
        expected_status: range = range(200, 400),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Check an HTTP dependency: ``GET url`` must answer a status in ``expected_status``.

        The URL is checked now (http/https, a host, a port from 1 to 65535): a bad one would
        otherwise fail every probe with an opaque error.
        """
        try:
            check_endpoint(url)
        except ValueError as exc:
            raise ValueError(f"health check {name!r}: url {exc} (got {scrub(url)!r})") from None
        bound = self._timeout(timeout)
        built = http_check(url, timeout=bound, expected_status=expected_status, headers=headers)
        self._add(name, built, critical=critical, timeout=bound, ttl=ttl, is_async=True)

    def add_redis(
        self,
        name: str,
        url_or_client: str | redis.asyncio.Redis,
        *,
        critical: bool = True,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> None:
        """Check Redis with PING (a URL gets a client we own and close in :meth:`aclose`).

        Anything but a URL string or a ``redis.asyncio`` client (``None``, a ``SecretStr``, a
        synchronous client) raises ``TypeError`` now rather than failing every probe later.
        """
        bound = self._timeout(timeout)
        built = redis_check(url_or_client, name=name, timeout=bound)
        self._add(name, built, critical=critical, timeout=bound, ttl=ttl, is_async=True)

    def add_sql(
        self,
        name: str,
        engine_or_dsn: AsyncEngine | str,
        *,
        critical: bool = True,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> None:
        """Check a database with ``SELECT 1`` on a small pool of our own, never the app's pool.

        Anything but a DSN string or an ``AsyncEngine`` raises ``TypeError`` now.
        """
        bound = self._timeout(timeout)
        built = sql_check(engine_or_dsn, name=name, timeout=bound)
        self._add(name, built, critical=critical, timeout=bound, ttl=ttl, is_async=True)

    def add_check(
        self,
        name: str,
        check: Callable[[], Awaitable[object]] | Callable[[], object],
        *,
        critical: bool = True,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> None:
        """Add any check: returning is healthy, raising fails, and a status it returns counts.

        ``False``, a :class:`HealthStatus`, a status word ("unhealthy", "DOWN", "warn"...) or
        an object or mapping with such a ``status`` (the seed kit's result objects) is
        honoured; an unknown ``status`` is unhealthy.

        A synchronous function runs on the registry's small thread pool, never on the loop.
        """
        require_callable(check, f"health check {name!r}")
        built = BuiltCheck(check, "component")  # type: ignore[arg-type]
        bound = self._timeout(timeout)
        self._add(name, built, critical=critical, timeout=bound, ttl=ttl, is_async=_is_async(check))

    def remove(self, name: str) -> None:
        """Forget a check (its gauges disappear); resources it owns are closed."""
        check = self._checks.pop(name, None)
        if check is not None:
            self._release(check)

    def _timeout(self, timeout: float | None) -> float:
        value = self._settings.timeout if timeout is None else timeout
        if not (math.isfinite(value) and value > 0):  # NaN passes "<= 0" and never times out
            raise ValueError(
                f"health check timeout must be a finite number > 0 seconds, got {value}"
            )
        return value

    def _add(
        self,
        name: str,
        built: BuiltCheck,
        *,
        critical: bool,
        timeout: float,
        ttl: float | None,
        is_async: bool,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"health check name must match {_NAME.pattern}, got {name!r}")
        ttl = self._settings.cache_ttl if ttl is None else ttl
        if not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"health check ttl must be a finite number >= 0 seconds, got {ttl}")
        self.remove(name)  # adding a name again replaces it (a reloaded module re-adds)
        self._checks[name] = _Check(name, built, critical, timeout, ttl, is_async)

    def _release(self, check: _Check) -> None:
        if check.built.aclose is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._pending_close.append(check.built.aclose)
            return
        task = asyncio.ensure_future(check.built.aclose())
        task.add_done_callback(_discard)

    # -- reading ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start background refreshing if ``background_interval`` is set (idempotent)."""
        self._ensure_background()

    async def report(self, *, critical_only: bool = False) -> HealthReport:
        """Run (or reuse) the checks concurrently and build the report."""
        checks = self._selected(critical_only)
        if self._closed:
            return self.snapshot(critical_only=critical_only)
        self._ensure_background()
        if critical_only:
            self._refresh_others()
        results = [self._usable(c) for c in checks]
        stale = [i for i, result in enumerate(results) if result is None]
        if stale:  # only expired checks cost a task; a fully cached probe never awaits
            ran = await asyncio.gather(*(self._shared_run(checks[i]) for i in stale))
            for i, result in zip(stale, ran, strict=True):
                results[i] = result
            self._note_overall()
        return self._build([r for r in results if r is not None])

    def _refresh_others(self) -> None:
        """Run the expired non-critical checks without waiting for them.

        Readiness answers from the critical checks only; under Kubernetes it is often the
        only probe that ever comes. Without this the non-critical checks would run only when
        someone asks ``/health``: their ``kiki.health.*`` points would repeat a result of
        any age (an alert on a dependency down that never clears), or never exist. Started
        by the probe, bounded by each check's TTL and single flight, as ``/health`` is.
        """
        if self._refreshing is not None and not self._refreshing.done():
            return
        others = [c for c in self._selected(False) if not c.critical and self._usable(c) is None]
        if others:
            self._refreshing = asyncio.ensure_future(self._refresh(others))

    async def _refresh(self, checks: list[_Check]) -> None:
        # return_exceptions: one broken run must not leave the others' results unrecorded
        await asyncio.gather(*(self._shared_run(c) for c in checks), return_exceptions=True)
        self._note_overall()

    def snapshot(self, *, critical_only: bool = False) -> HealthReport:
        """Report the last known results without running anything (metrics, fast paths)."""
        results = [self._current(c) for c in self._selected(critical_only)]
        return self._build([r for r in results if r is not None])

    def _selected(self, critical_only: bool) -> list[_Check]:
        # tuple() copies atomically: metric callbacks read this from the exporter's thread
        return [c for c in tuple(self._checks.values()) if c.critical or not critical_only]

    def _build(self, results: list[CheckResult]) -> HealthReport:
        return HealthReport(
            service=self._service,
            version=self._version,
            status=overall_status(results),
            lifecycle=self.lifecycle.state,
            uptime_seconds=self.uptime(),
            timestamp=time.time(),
            dependencies=tuple(results),
        )

    def observed(self) -> bool:
        """Tell whether the overall status means something: no checks, or one has run."""
        checks = tuple(self._checks.values())
        return not checks or any(c.last is not None for c in checks)

    def uptime(self) -> float:
        """Seconds since the registry (i.e. ``configure()``) was created."""
        return time.monotonic() - self._started

    def _current(self, check: _Check) -> CheckResult | None:
        """Return the last result, marked ``stale`` if background refreshing fell behind."""
        last = check.last
        if last is None or self._settings.background_interval is None:
            return last
        if time.monotonic() - last.finished > self._settings.max_staleness:
            return replace(last, status=HealthStatus.UNHEALTHY, reason="stale")
        return last

    def _usable(self, check: _Check) -> CheckResult | None:
        """Return the result a probe may reuse, or None if the check must run (again)."""
        current = self._current(check)
        if current is not None and self._settings.background_interval is not None:
            return current  # background mode: probes never run checks once a snapshot exists
        if current is not None and time.monotonic() - current.finished < check.ttl:
            return current
        return None

    async def _shared_run(self, check: _Check) -> CheckResult:
        """Join the run in flight or start one; shielded so a gone client cannot cancel it."""
        loop = asyncio.get_running_loop()
        task = check.inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._run(check), name=f"kiki-health:{check.name}")
            check.inflight = task
        return await asyncio.shield(task)

    # -- running ------------------------------------------------------------------------

    async def _run(self, check: _Check) -> CheckResult:
        checked_at, started = time.time(), time.perf_counter()
        status, reason, detail = await self._call(check)
        duration = time.perf_counter() - started
        result = CheckResult(
            check.name,
            status,
            check.critical,
            check.built.component_type,
            duration,
            checked_at,
            time.monotonic(),
            reason,
        )
        previous = check.last
        check.last = result
        if self._checks.get(check.name) is check:  # removed meanwhile: record nothing
            self._metrics.record(result)
            self._note_change(previous, result, detail)
        return result

    async def _call(self, check: _Check) -> tuple[HealthStatus, str | None, str | None]:
        """Run the check within its timeout; map every outcome to (status, reason, detail)."""
        # no spans of the check's calls, and none of httpx's log lines (_http_client)
        probe = otel_context.set_value(HEALTH_PROBE, True)
        token = otel_context.attach(otel_context.set_value(_SUPPRESS, True, probe))
        try:
            inner = asyncio.ensure_future(self._invoke(check))
        finally:
            otel_context.detach(token)
        done, _ = await asyncio.wait({inner}, timeout=check.timeout)
        if not done:
            inner.cancel()  # not awaited: a check that ignores cancellation cannot hold us
            inner.add_done_callback(_discard)
            return HealthStatus.UNHEALTHY, "timeout", f"no answer within {check.timeout}s"
        if inner.cancelled():  # the check raised CancelledError: we did not cancel it
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError  # we are being cancelled ourselves: let it through
            return HealthStatus.UNHEALTHY, "cancelled", "the check raised CancelledError"
        exc = inner.exception()
        if exc is None:
            return _interpret(inner.result())
        if isinstance(exc, CheckFailed):
            return HealthStatus.UNHEALTHY, exc.reason, scrub(_text(exc))
        reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return HealthStatus.UNHEALTHY, reason, scrub(f"{type(exc).__name__}: {_text(exc)}")

    async def _invoke(self, check: _Check) -> object:
        if check.is_async:
            return await check.built.probe()
        value = await self._in_thread(check)
        return await value if inspect.isawaitable(value) else value

    async def _in_thread(self, check: _Check) -> object:
        """The synchronous check on a daemon thread of its own, in a free slot.

        At most ``sync_workers`` run at once; a slot is given back when the call returns
        or its caller stops waiting (its timeout): a hung call keeps its thread, not a
        slot, so hung checks cannot starve the others, and a daemon does not hold up the
        process's exit (a pool's threads are joined at exit).
        """
        if check.thread is not None and not check.thread.done():
            raise TimeoutError("the previous call is still running")
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:  # a semaphore serves one loop
            self._slots = (loop, asyncio.Semaphore(self._settings.sync_workers))
        async with self._slots[1]:
            context = otel_context.get_current()
            check.thread = _start_daemon(check.name, _call_in_context, context, check.built.probe)
            return await asyncio.wrap_future(check.thread)

    # -- changes ------------------------------------------------------------------------

    def _note_change(
        self, previous: CheckResult | None, result: CheckResult, detail: str | None
    ) -> None:
        old = None if previous is None else previous.status
        if old is not result.status:
            _announce(result.name, old, result.status, result.reason, detail)

    def _note_overall(self) -> None:
        """Log the service's status when it changed, once every check has a result.

        Called after a round of checks, not after each one: a round's checks finish one by
        one, and the mixes of new and old results in between are states no probe saw.
        """
        results = [self._current(check) for check in self._selected(False)]
        if any(result is None for result in results):
            return
        overall = overall_status(r for r in results if r is not None)
        if overall is not self._last_overall:
            _announce(None, self._last_overall, overall, None, None)
            self._last_overall = overall

    # -- background ---------------------------------------------------------------------

    def _ensure_background(self) -> None:
        if self._settings.background_interval is None or self._closed:
            return
        task = self._background
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self._background = loop.create_task(self._refresh_forever(), name="kiki-health:bg")

    async def _refresh_forever(self) -> None:
        interval = self._settings.background_interval or 1.0
        while not self._closed:
            checks = tuple(self._checks.values())
            # return_exceptions: one broken run must not end refreshing for every check
            await asyncio.gather(*(self._shared_run(c) for c in checks), return_exceptions=True)
            self._note_overall()
            await asyncio.sleep(interval)

    # -- closing ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop background work and close clients/pools/threads we created (not the user's)."""
        self._closed = True
        running = (self._background, self._refreshing, *(c.inflight for c in self._checks.values()))
        tasks = [t for t in running if t]
        for task in tasks:
            task.cancel()
        closers = [*self._pending_close]
        closers += [c.built.aclose for c in self._checks.values() if c.built.aclose]
        self._pending_close.clear()
        # All at once, under one budget: one after another, a hung database's close took
        # the shutdown's whole cleanup timeout (an error line, an unclean report, for a
        # cleanup the user never registered) and the closes after it never ran.
        closing = [asyncio.ensure_future(close()) for close in closers]
        for task in closing:
            task.add_done_callback(_discard)  # a close that fails must not stop the others
        if closing:
            _, hung = await asyncio.wait(closing, timeout=_CLOSE_BUDGET_S)
            for task in hung:
                task.cancel()
            if hung:
                log.warning(
                    "health.close_abandoned",
                    count=len(hung),
                    hint=f"a dependency's client did not close within {_CLOSE_BUDGET_S}s",
                )
        self._metrics.detach(self)


_CLOSE_BUDGET_S = 1.0
"""How long the checks' own clients may take to close, all together: a close takes a few
milliseconds; past a second the dependency is hung, and the shutdown's deadline is near."""


def _start_daemon(name: str, fn: Callable[..., object], *args: object) -> Future[object]:
    """``fn(*args)`` on a new daemon thread named for the check; its future."""
    future: Future[object] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as error:  # the future carries it to the caller
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=f"kiki-health:{name}", daemon=True).start()
    return future


def _call_in_context(context: otel_context.Context, fn: Callable[[], object]) -> object:
    token = otel_context.attach(context)
    try:
        return fn()
    finally:
        otel_context.detach(token)


def _announce(
    dependency: str | None,
    old: HealthStatus | None,
    new: HealthStatus,
    reason: str | None,
    detail: str | None,
) -> None:
    """One log event (and span event, if a span is current) per status change."""
    fields: dict[str, Any] = {
        "dependency": dependency,
        "from": None if old is None else old.value,
        "to": new.value,
        "reason": reason,
    }
    level = log.info if new is HealthStatus.HEALTHY else log.warning
    level("health.status_changed", **fields, **({"error": detail} if detail else {}))
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "health.status_changed",
            {k: v for k, v in fields.items() if v is not None} | {"dependency": dependency or "*"},
        )
