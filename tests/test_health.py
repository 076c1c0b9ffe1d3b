"""The health registry: status model, timeouts, single-flight, caching, background mode,
status-change events and the health metrics (in memory and over real OTLP)."""

from __future__ import annotations

import asyncio
import enum
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.metrics import MeterProvider as APIMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from kiki_otel._health import CheckFailed, HealthRegistry, HealthStatus
from kiki_otel._health_asgi import HealthEndpoints
from kiki_otel._lifecycle import Lifecycle
from kiki_otel._settings import HealthSettings
from tests.conftest import metric_points

Factory = Callable[..., HealthRegistry]


class Counting:
    """An async check that counts its calls and can be held open on an event."""

    def __init__(self, result: object = None) -> None:
        self.calls = 0
        self.result = result
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> object:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
async def make(reader: InMemoryMetricReader) -> AsyncIterator[Factory]:
    """Build registries on an in-memory meter provider; close them after the test."""
    made: list[HealthRegistry] = []
    provider = MeterProvider(metric_readers=[reader])

    def factory(meter_provider: APIMeterProvider | None = None, **settings: Any) -> HealthRegistry:
        lifecycle = Lifecycle()
        lifecycle.mark_ready()
        registry = HealthRegistry(
            settings=HealthSettings(**settings),
            service_name="checkout",
            service_version="1.2.3",
            meter_provider=meter_provider or provider,
            lifecycle=lifecycle,
        )
        made.append(registry)
        return registry

    yield factory
    for registry in made:
        await registry.aclose()
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    return metric_points(reader, name)


def observed_dependencies(reader: InMemoryMetricReader) -> set[str]:
    return {p.attributes["dependency"] for p in points(reader, "kiki.health.dependency.status")}


def by_name(report: Any) -> dict[str, Any]:
    return {d.name: d for d in report.dependencies}


async def test_outcomes_map_to_status_and_safe_reasons(make: Factory) -> None:
    """Returning is healthy; returned HealthStatus/False are honoured; raising is unhealthy with
    the exception class (or CheckFailed's reason) as the reason, never the message."""
    registry = make()
    registry.add_check("ok", Counting())
    registry.add_check("degraded", Counting(HealthStatus.DEGRADED), critical=False)
    registry.add_check("false", Counting(False), critical=False)
    registry.add_check("raises", Counting(ConnectionError("postgres://u:pw@db.internal")))
    registry.add_check("failed", Counting(CheckFailed("queue full!")), critical=False)
    deps = by_name(await registry.report())
    assert (deps["ok"].status, deps["ok"].reason) == (HealthStatus.HEALTHY, None)
    assert (deps["degraded"].status, deps["degraded"].reason) == (HealthStatus.DEGRADED, "reported")
    assert (deps["false"].status, deps["false"].reason) == (HealthStatus.UNHEALTHY, "reported")
    assert deps["raises"].status is HealthStatus.UNHEALTHY
    assert deps["raises"].reason == "ConnectionError"
    assert deps["failed"].reason == "queue_full_"


@pytest.mark.parametrize(
    ("critical", "check_result", "expected"),
    [
        (True, False, HealthStatus.UNHEALTHY),
        (False, False, HealthStatus.DEGRADED),
        (True, HealthStatus.DEGRADED, HealthStatus.DEGRADED),
        (True, None, HealthStatus.HEALTHY),
    ],
)
async def test_critical_down_is_unhealthy_non_critical_down_is_degraded(
    make: Factory, critical: bool, check_result: object, expected: HealthStatus
) -> None:
    """The overall status: a critical dependency down makes the service unhealthy (and not
    ready); a non-critical one down, or a critical one degraded, makes it degraded."""
    registry = make()
    registry.add_check("a", Counting())
    registry.add_check("b", Counting(check_result), critical=critical)
    report = await registry.report()
    assert report.status is expected
    assert report.ready is (expected is not HealthStatus.UNHEALTHY)


async def test_thousand_concurrent_probes_call_the_dependency_once(make: Factory) -> None:
    """1,000 concurrent reports while a run is in flight share that one run (single-flight),
    and reports within the TTL reuse its result: one dependency call per TTL."""
    registry = make(cache_ttl=3600)
    check = Counting()
    check.gate = asyncio.Event()
    registry.add_check("dep", check)
    probes = [asyncio.create_task(registry.report()) for _ in range(1000)]
    await asyncio.sleep(0)
    check.gate.set()
    reports = await asyncio.gather(*probes)
    assert check.calls == 1
    assert len({r.dependencies[0].checked_at for r in reports}) == 1  # all saw the same run
    await asyncio.gather(*(registry.report() for _ in range(1000)))
    assert check.calls == 1


class _SeedHealth:
    """The seed kit's result object: a ``status`` attribute (an enum of words)."""

    class Status(enum.Enum):
        HEALTHY = "healthy"
        UNHEALTHY = "unhealthy"

    def __init__(self, status: Any) -> None:
        self.status = status
        self.response_time_ms = 2.3


class _RaisingStatus:
    @property
    def status(self) -> str:
        raise RuntimeError("no session")


@pytest.mark.parametrize(
    ("returned", "status", "reason"),
    [
        # what a check says of itself is honoured, in the usual vocabularies
        (_SeedHealth(_SeedHealth.Status.UNHEALTHY), HealthStatus.UNHEALTHY, "reported"),
        (_SeedHealth(_SeedHealth.Status.HEALTHY), HealthStatus.HEALTHY, None),
        (_SeedHealth("degraded"), HealthStatus.DEGRADED, "reported"),
        ({"status": "unhealthy", "error": "timeout"}, HealthStatus.UNHEALTHY, "reported"),
        ({"status": "DOWN"}, HealthStatus.UNHEALTHY, "reported"),
        ({"status": "pass"}, HealthStatus.HEALTHY, None),
        ({"status": "warn"}, HealthStatus.DEGRADED, "reported"),
        ({"status": 503}, HealthStatus.UNHEALTHY, "reported"),
        ({"status": 204}, HealthStatus.HEALTHY, None),
        ({"status": True}, HealthStatus.HEALTHY, None),
        ({"status": False}, HealthStatus.UNHEALTHY, "reported"),
        ({"status": "on fire"}, HealthStatus.UNHEALTHY, "unknown_status"),
        ({"status": None}, HealthStatus.UNHEALTHY, "unknown_status"),
        ("unhealthy", HealthStatus.UNHEALTHY, "reported"),
        ("Degraded", HealthStatus.DEGRADED, "reported"),
        # anything that says nothing of a status: returning is healthy
        ("PONG", HealthStatus.HEALTHY, None),
        (True, HealthStatus.HEALTHY, None),
        (None, HealthStatus.HEALTHY, None),
        ({"rows": 1}, HealthStatus.HEALTHY, None),
        ([("ok",)], HealthStatus.HEALTHY, None),
        (_RaisingStatus(), HealthStatus.HEALTHY, None),
    ],
)
async def test_a_returned_status_is_honoured(
    make: Factory, returned: object, status: HealthStatus, reason: str | None
) -> None:
    """The seed kit's checks return an object with a ``status``; it must not read healthy."""
    registry = make()
    registry.add_check("dep", Counting(returned))
    (dep,) = (await registry.report()).dependencies
    assert (dep.status, dep.reason) == (status, reason)


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        (
            {"status": "unhealthy", "error": "connect to redis://:s3cret@cache:6379 refused"},
            "connect to redis://***@cache:6379 refused",
        ),
        ({"status": "fail", "output": "disk full "}, "disk full"),
        ({"status": 503, "message": ""}, "the check returned status 503"),
        ({"status": 503, "message": "maintenance"}, "maintenance"),
    ],
)
async def test_what_an_unhealthy_returned_object_says_is_logged(
    make: Factory, returned: dict[str, object], error: str
) -> None:
    """The seed kit's checks return their failure as ``error`` on the object; it is the
    ``error`` of the status-change log line (scrubbed), as a raised exception's text is."""
    registry = make()
    registry.add_check("dep", Counting(returned))
    with structlog.testing.capture_logs() as logs:
        await registry.report()
    [change] = [e for e in logs if e["event"] == "health.status_changed" and e["dependency"]]
    assert (change["to"], change["error"]) == ("unhealthy", error)


async def test_a_healthy_returned_object_logs_no_error(make: Factory) -> None:
    registry = make()
    registry.add_check("dep", Counting({"status": "ok", "message": "all good"}))
    with structlog.testing.capture_logs() as logs:
        await registry.report()
    [change] = [e for e in logs if e["event"] == "health.status_changed" and e["dependency"]]
    assert change["to"] == "healthy" and "error" not in change


async def test_readiness_keeps_the_other_checks_metrics_current(
    make: Factory, reader: InMemoryMetricReader
) -> None:
    """Under Kubernetes readiness is often the only probe: it starts the expired
    non-critical checks (not waiting for them), so their points follow the dependency
    instead of repeating the result of the last ``/health``, or never existing."""
    registry = make(cache_ttl=0)
    cache = Counting(ConnectionError("down"))
    registry.add_check("db", Counting())
    registry.add_check("cache", cache, critical=False)

    async def states() -> dict[str, int]:
        await registry.report(critical_only=True)
        await asyncio.sleep(0.05)  # (the other checks' run, started by the probe)
        return {
            p.attributes["state"]: p.value
            for p in points(reader, "kiki.health.dependency.status")
            if p.attributes["dependency"] == "cache"
        }

    assert (await states())["unhealthy"] == 1  # never asked by /health: there all the same
    cache.result = None  # recovered
    assert (await states())["unhealthy"] == 0
    assert cache.calls == 2
    overall = {p.attributes["state"]: p.value for p in points(reader, "kiki.health.status")}
    assert overall["healthy"] == 1


async def test_expired_ttl_runs_the_check_again(make: Factory) -> None:
    """After the TTL has passed the next probe runs the check again (a zero TTL still
    coalesces concurrent probes onto the run in flight)."""
    registry = make()
    check = Counting()
    registry.add_check("dep", check, ttl=0.01)
    await registry.report()
    await asyncio.sleep(0.05)  # longer than the TTL: the result has expired
    await asyncio.gather(*(registry.report() for _ in range(50)))
    assert check.calls == 2


async def test_timeout_marks_unhealthy_and_the_report_returns(make: Factory) -> None:
    """A check that never finishes (even one that swallows cancellation) is reported unhealthy
    with reason ``timeout``; the report still returns and other checks are unaffected."""
    registry = make()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation on purpose

    hang = Counting()
    hang.gate = asyncio.Event()
    registry.add_check("hangs", hang, timeout=0.05)
    registry.add_check("stubborn", stubborn, timeout=0.05)
    registry.add_check("ok", Counting())
    deps = by_name(await registry.report())
    assert deps["hangs"].reason == deps["stubborn"].reason == "timeout"
    assert deps["ok"].status is HealthStatus.HEALTHY
    release.set()
    hang.gate.set()


async def test_sync_checks_run_on_the_bounded_pool_and_never_pile_up(make: Factory) -> None:
    """A synchronous check runs on a ``kiki-health`` worker thread, not the event loop; while
    a hung call still occupies its thread, later runs report ``timeout`` instead of taking
    another thread."""
    registry = make(cache_ttl=0)
    names: list[str] = []
    stuck = threading.Event()
    hung_calls = 0

    def sync_ok() -> bool:
        names.append(threading.current_thread().name)
        return True

    def hung() -> None:
        nonlocal hung_calls
        hung_calls += 1
        stuck.wait(5)

    registry.add_check("sync", sync_ok)
    registry.add_check("hung", hung, timeout=0.05)
    for _ in range(3):
        deps = by_name(await registry.report())
        assert deps["hung"].reason == "timeout"
    assert deps["sync"].status is HealthStatus.HEALTHY
    assert all(name.startswith("kiki-health") for name in names)
    assert hung_calls == 1
    stuck.set()


async def test_hung_sync_checks_cannot_starve_the_others(make: Factory) -> None:
    """More hung synchronous checks than slots: each keeps its thread but gives its slot
    back at its timeout and takes none while it is still running, so once each has
    started (a round starts as many as there are slots) a healthy synchronous check runs
    and passes (before, the pool's workers stayed taken and it timed out in every round:
    /health/ready 503 for good)."""
    registry = make(cache_ttl=0, timeout=0.1, sync_workers=2)
    stuck = threading.Event()
    for i in range(4):
        registry.add_check(f"hung{i}", lambda: stuck.wait(30), critical=False)
    registry.add_check("fast_sync", lambda: True)
    for _ in range(5):  # until every hung call has started (each holds a slot till timeout)
        if by_name(await registry.report())["fast_sync"].status is HealthStatus.HEALTHY:
            break
    for _ in range(3):
        deps = by_name(await registry.report())
        assert deps["fast_sync"].status is HealthStatus.HEALTHY
        assert {deps[f"hung{i}"].reason for i in range(4)} == {"timeout"}
    assert sum(t.name.startswith("kiki-health:hung") for t in threading.enumerate()) == 4
    stuck.set()


async def test_at_most_sync_workers_checks_run_at_once(make: Factory) -> None:
    """The slots bound how many synchronous checks run at once (each on its own thread)."""
    registry = make(cache_ttl=0, timeout=5, sync_workers=2)
    lock = threading.Lock()
    running, most = 0, 0

    def slow() -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.05)
        with lock:
            running -= 1
        return True

    for i in range(6):
        registry.add_check(f"slow{i}", slow)
    report = await registry.report()
    assert report.status is HealthStatus.HEALTHY and most == 2


def test_a_hung_sync_check_does_not_hold_up_the_exit(tmp_path: Any) -> None:
    """A script whose synchronous check hangs still exits when it ends: the check's thread is
    a daemon (a pool's worker was joined at exit, and the process hung there)."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "hangs.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, threading
            import kiki_otel

            telemetry = kiki_otel.configure()
            telemetry.health.add_check("hangs", lambda: threading.Event().wait(3600))
            report = asyncio.run(telemetry.health.report())
            print(report.status.value, flush=True)
            """
        )
    )
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "KIKI_OTEL_HEALTH__TIMEOUT": "0.2"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "unhealthy" in done.stdout.splitlines()


async def test_checks_can_be_added_replaced_and_removed_at_runtime(make: Factory) -> None:
    """Checks come and go while the service runs; re-adding a name replaces the check."""
    registry = make()
    registry.add_check("a", Counting(False))
    assert (await registry.report()).status is HealthStatus.UNHEALTHY
    registry.add_check("a", Counting())
    assert (await registry.report()).status is HealthStatus.HEALTHY
    registry.add_check("b", Counting())
    registry.remove("a")
    registry.remove("missing")  # harmless
    assert [d.name for d in (await registry.report()).dependencies] == ["b"]


def test_invalid_names_and_bounds_fail_fast(make: Factory) -> None:
    """Names become metric attributes and IETF keys, so odd ones are refused at add time,
    as are non-positive timeouts and negative TTLs."""
    registry = make()
    for bad in ("", "a:b", "x" * 65, "with space"):
        with pytest.raises(ValueError, match="name"):
            registry.add_check(bad, Counting())
    with pytest.raises(ValueError, match="timeout"):
        registry.add_check("t", Counting(), timeout=0)
    with pytest.raises(ValueError, match="ttl"):
        registry.add_check("t", Counting(), ttl=-1)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "http:// or https://"),
        ("ftp://host/x", "http:// or https://"),
        ("http://127.0.0.1:99999/x", "port from 1 to 65535"),
        ("http://[::1/x", "port from 1 to 65535"),
        ("https:///x", "host"),
        ("http://u:s3cr3t@db:0/x", "port"),
    ],
)
def test_add_http_refuses_unusable_urls(make: Factory, url: str, problem: str) -> None:
    """A URL no probe can reach used to be accepted and then fail every probe (port 99999
    even as an opaque "ExceptionGroup"): it is refused when added, saying what is wrong,
    naming the check and masking credentials."""
    registry = make()
    with pytest.raises(ValueError, match=problem) as info:
        registry.add_http("dep", url)
    assert "'dep'" in str(info.value) and "s3cr3t" not in str(info.value)
    assert registry.snapshot().dependencies == ()
    registry.add_http("ok", "http://[::1]:8080/healthz")  # IPv6, port, path: still fine


@pytest.mark.parametrize("bad", ["not callable", None, 42])
def test_add_check_refuses_non_callables(make: Factory, bad: Any) -> None:
    """A non-callable check used to fail only when probed (TypeError as an unhealthy
    dependency): it is a TypeError when added."""
    registry = make()
    with pytest.raises(TypeError, match="callable"):
        registry.add_check("d", bad)
    assert registry.snapshot().dependencies == ()


async def test_add_check_refuses_a_coroutine_object(make: Factory) -> None:
    """``add_check("d", ping())`` (the call, not the function) is refused with a hint."""
    registry = make()
    coro = Counting()()
    with pytest.raises(TypeError, match="not the result of calling it"):
        registry.add_check("d", coro)  # type: ignore[arg-type]
    coro.close()


async def get_health(registry: HealthRegistry) -> httpx.Response:
    """GET /health through the real endpoint middleware (the wrapped app answers 404)."""

    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = HealthEndpoints(not_found, registry=registry, settings=HealthSettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get("/health")


class Unprintable(Exception):
    """An exception whose ``__str__`` itself raises (a buggy driver or user error class)."""

    def __str__(self) -> str:
        return self.missing  # type: ignore[attr-defined, no-any-return]


async def test_a_check_error_whose_str_raises_is_still_a_check_result(
    make: Factory, reader: InMemoryMetricReader
) -> None:
    """Describing the error for the log must not fail the probe: a non-critical check raising
    an exception that cannot be printed makes /health 200 "degraded" (not a 503 with no
    dependencies), the result is cached and recorded, and the log says it was unprintable."""
    registry = make()
    cache = Counting(Unprintable())
    registry.add_check("db", Counting())
    registry.add_check("cache", cache, critical=False)
    with structlog.testing.capture_logs() as logs:
        first, second = await get_health(registry), await get_health(registry)
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == "degraded"
    reasons = {d["name"]: d["reason"] for d in first.json()["dependencies"]}
    assert reasons == {"db": None, "cache": "Unprintable"}
    assert cache.calls == 1  # the second probe read the cached result
    failures = [(dict(p.attributes), p.value) for p in points(reader, "kiki.health.check.failures")]
    assert failures == [({"dependency": "cache", "reason": "Unprintable"}, 1)]
    changes = [e for e in logs if e["event"] == "health.status_changed"]
    [change] = [e for e in changes if e["dependency"] == "cache"]
    assert change["error"] == "Unprintable: <unprintable Unprintable>"
    assert not [e for e in logs if e["log_level"] == "error"]


async def test_a_check_raising_cancelled_error_is_unhealthy(make: Factory) -> None:
    """A check that raises CancelledError (async, or sync on its worker thread) was not
    cancelled by us: it is an unhealthy result with reason ``cancelled``, and /health still
    answers instead of the CancelledError escaping the endpoint with no response."""
    registry = make()

    def sync_cancelled() -> None:
        raise asyncio.CancelledError

    registry.add_check("db", Counting())
    registry.add_check("queue", Counting(asyncio.CancelledError()), critical=False)
    registry.add_check("legacy", sync_cancelled, critical=False)
    response = await get_health(registry)
    assert (response.status_code, response.json()["status"]) == (200, "degraded")
    deps = {d["name"]: (d["status"], d["reason"]) for d in response.json()["dependencies"]}
    assert deps == {
        "db": ("healthy", None),
        "queue": ("unhealthy", "cancelled"),
        "legacy": ("unhealthy", "cancelled"),
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timeouts_and_ttls_are_refused(make: Factory, bad: float) -> None:
    """NaN slipped through ``<= 0`` and made a hanging check hang /health with it (``wait``
    with a NaN timeout never times out); infinities are no bound either. All are refused
    when the check is added, by every ``add_*``."""
    registry = make()
    with pytest.raises(ValueError, match="timeout"):
        registry.add_check("t", Counting(), timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        registry.add_http("h", "http://127.0.0.1:9/", timeout=bad)
    with pytest.raises(ValueError, match="ttl"):
        registry.add_check("t", Counting(), ttl=bad)
    assert registry.snapshot().dependencies == ()


async def test_status_changes_are_logged_once_per_change(make: Factory) -> None:
    """``health.status_changed`` (dependency, from, to, reason) is logged when a status
    changes, not on every check; the error detail is in the log with credentials scrubbed."""
    registry = make(cache_ttl=0)
    check = Counting()
    registry.add_check("db", check)
    with structlog.testing.capture_logs() as logs:
        await registry.report()
        await registry.report()
        check.result = OSError("connect to postgresql://app:hunter2@db:5432/x failed")
        await registry.report()
        await registry.report()
        check.result = None
        await registry.report()
    changes = [e for e in logs if e["event"] == "health.status_changed" and e["dependency"]]
    assert [(e["from"], e["to"]) for e in changes] == [
        (None, "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]
    assert changes[1]["reason"] == "OSError"
    assert "hunter2" not in changes[1]["error"]
    assert "***@db" in changes[1]["error"]
    service = [e for e in logs if e["event"] == "health.status_changed" and not e["dependency"]]
    assert [e["to"] for e in service] == ["healthy", "unhealthy", "healthy"]


async def test_the_service_status_is_logged_for_whole_rounds_only(make: Factory) -> None:
    """The service's status changes are logged once a round of checks is done: the mixes
    of new and old results while a round's checks finish one by one are states no probe
    saw (first probe degraded: no "healthy" first; then two checks swapping states at once:
    no passing "unhealthy" or "healthy")."""
    registry = make(cache_ttl=0)
    slow, fast = Counting(), Counting(HealthStatus.DEGRADED)
    registry.add_check("slow", slow, critical=False)
    registry.add_check("fast", fast)
    with structlog.testing.capture_logs() as logs:
        assert (await registry.report()).status is HealthStatus.DEGRADED
        slow.result, fast.result = HealthStatus.DEGRADED, None
        assert (await registry.report()).status is HealthStatus.DEGRADED
        slow.result, fast.result = None, False
        assert (await registry.report()).status is HealthStatus.UNHEALTHY
    service = [e for e in logs if e["event"] == "health.status_changed" and not e["dependency"]]
    transitions = [(e["from"], e["to"]) for e in service]
    assert transitions == [(None, "degraded"), ("degraded", "unhealthy")]


async def test_status_change_adds_a_span_event_to_the_current_span(make: Factory) -> None:
    """Where a span is current, a status change also becomes a span event on it."""
    tracer = TracerProvider().get_tracer("test")
    registry = make()
    registry.add_check("cache", Counting(False), critical=False)
    with tracer.start_as_current_span("work") as span:
        await registry.report()
    events = [e for e in span.events if e.name == "health.status_changed"]  # type: ignore[attr-defined]
    assert {"dependency": "cache", "to": "unhealthy", "reason": "reported"}.items() <= dict(
        events[0].attributes
    ).items()


async def started_in_background(registry: HealthRegistry, check: Counting) -> None:
    registry.add_check("dep", check)
    await registry.start()
    for _ in range(500):
        if check.calls:
            return
        await asyncio.sleep(0.01)


async def test_background_mode_probes_read_the_snapshot(make: Factory) -> None:
    """With ``background_interval`` the checks run in the background and probes only read the
    snapshot: 1,000 probes, still one dependency call."""
    registry = make(background_interval=3600)
    check = Counting()
    await started_in_background(registry, check)
    reports = await asyncio.gather(*(registry.report() for _ in range(1000)))
    assert check.calls == 1
    assert {r.status for r in reports} == {HealthStatus.HEALTHY}


async def test_background_snapshot_older_than_max_staleness_is_unhealthy(make: Factory) -> None:
    """A background snapshot older than ``max_staleness`` reads as unhealthy, reason ``stale``
    (the refresher is stuck or dead), and the probe still runs nothing itself."""
    registry = make(background_interval=3600, max_staleness=0.01)
    check = Counting()
    await started_in_background(registry, check)
    await asyncio.sleep(0.05)  # longer than max_staleness; the next refresh is an hour away
    stale = (await registry.report()).dependencies[0]
    assert (stale.status, stale.reason) == (HealthStatus.UNHEALTHY, "stale")
    assert check.calls == 1


async def test_health_metrics_have_the_documented_names_and_values(
    make: Factory, reader: InMemoryMetricReader
) -> None:
    """State-set gauges (1 for the current state, 0 for the others), the overall status, the
    check duration histogram (s), failures by reason, and process.uptime (s)."""
    registry = make()
    registry.add_check("postgres", Counting())
    registry.add_check("cache", Counting(ConnectionError()), critical=False)
    await registry.report()
    deps = {
        (p.attributes["dependency"], p.attributes["critical"], p.attributes["state"]): p.value
        for p in points(reader, "kiki.health.dependency.status")
    }
    assert deps == {
        ("postgres", "true", "healthy"): 1,
        ("postgres", "true", "degraded"): 0,
        ("postgres", "true", "unhealthy"): 0,
        ("cache", "false", "healthy"): 0,
        ("cache", "false", "degraded"): 0,
        ("cache", "false", "unhealthy"): 1,
    }
    overall = {p.attributes["state"]: p.value for p in points(reader, "kiki.health.status")}
    assert overall == {"healthy": 0, "degraded": 1, "unhealthy": 0}
    durations = {
        p.attributes["dependency"]: p.count for p in points(reader, "kiki.health.check.duration")
    }
    assert durations == {"postgres": 1, "cache": 1}
    failures = [(dict(p.attributes), p.value) for p in points(reader, "kiki.health.check.failures")]
    assert failures == [({"dependency": "cache", "reason": "ConnectionError"}, 1)]
    [uptime] = points(reader, "process.uptime")
    assert uptime.value > 0


async def test_removed_check_and_closed_registry_stop_reporting_metrics(
    make: Factory, reader: InMemoryMetricReader
) -> None:
    """A removed check's gauges disappear; after ``aclose()`` the registry reports nothing, and
    a new registry on the same provider (a second configure()) takes the gauges over."""
    first = make()
    first.add_check("a", Counting())
    first.add_check("b", Counting())
    await first.report()
    first.remove("b")
    assert observed_dependencies(reader) == {"a"}
    await first.aclose()
    assert points(reader, "kiki.health.dependency.status") == []
    second = make()
    second.add_check("c", Counting())
    await second.report()
    assert observed_dependencies(reader) == {"c"}


def test_health_metrics_arrive_over_real_otlp() -> None:
    """A real SDK MeterProvider exporting OTLP/HTTP to a real receiver delivers the health
    metrics with the documented names, units, attributes and values."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from tests.support.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        exporter = OTLPMetricExporter(endpoint=rx.http_url("metrics"))
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[reader])
        registry = HealthRegistry(
            settings=HealthSettings(),
            service_name="checkout",
            service_version=None,
            meter_provider=provider,
            lifecycle=Lifecycle(),
        )
        registry.add_check("postgres", lambda: True)
        registry.add_check("cache", lambda: False, critical=False)
        asyncio.run(registry.report())
        provider.force_flush()
        asyncio.run(registry.aclose())
        provider.shutdown()

        rx.wait_for_metrics("kiki.health.status", 3)

        def latest(name: str, **attrs: str) -> Any:
            point = rx.latest_metric(name, attrs)
            assert point is not None, (name, attrs)
            return point

        cache = latest("kiki.health.dependency.status", dependency="cache", state="unhealthy")
        assert (cache.kind, cache.value, cache.attributes["critical"]) == ("gauge", 1, "false")
        postgres = latest("kiki.health.dependency.status", dependency="postgres", state="healthy")
        assert postgres.value == 1
        assert latest("kiki.health.status", state="degraded").value == 1
        failures = latest("kiki.health.check.failures", dependency="cache", reason="reported")
        assert (failures.value, failures.is_monotonic) == (1, True)
        duration = latest("kiki.health.check.duration", dependency="postgres")
        assert (duration.unit, duration.count) == ("s", 1)
        uptime = latest("process.uptime")
        assert uptime.unit == "s"
        assert uptime.value > 0
        assert {m.scope_name for m in rx.metrics()} == {"kiki_otel.health"}
