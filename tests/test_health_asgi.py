"""The health endpoints: routing, liveness vs readiness, lifecycle, both body formats,
headers, and the middleware under a real uvicorn server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.metrics import NoOpMeterProvider

from kiki_otel._health import HealthRegistry, HealthStatus
from kiki_otel._health_asgi import HealthEndpoints
from kiki_otel._lifecycle import Lifecycle
from kiki_otel._settings import HealthSettings
from tests.support.services import free_port, wait_until

HEALTH_JSON = {"accept": "application/health+json"}


class Downstream:
    """The wrapped app: records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.seen.append(("lifespan", ""))
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            return
        self.seen.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


class Calls:
    """A check whose answer a test can change, counting its calls."""

    def __init__(self, result: object = None) -> None:
        self.calls = 0
        self.result = result

    async def __call__(self) -> object:
        self.calls += 1
        return self.result


class Setup:
    def __init__(self, **settings: Any) -> None:
        self.settings = HealthSettings(**settings)
        self.lifecycle = Lifecycle()
        self.registry = HealthRegistry(
            settings=self.settings,
            service_name="checkout",
            service_version="2.0.1",
            meter_provider=NoOpMeterProvider(),
            lifecycle=self.lifecycle,
        )
        self.critical, self.optional = Calls(), Calls()
        self.downstream = Downstream()
        self.app = HealthEndpoints(self.downstream, registry=self.registry, settings=self.settings)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """A ready service with one critical and one non-critical check, both healthy."""
    s = Setup(cache_ttl=0)
    s.lifecycle.mark_ready()
    s.registry.add_check("db", s.critical)
    s.registry.add_check("cache", s.optional, critical=False)
    yield s
    await s.registry.aclose()


async def test_live_never_runs_a_check(setup: Setup) -> None:
    """/health/live answers 200 about the process alone, even with every dependency down,
    and calls no check (a slow database must not get the pod restarted)."""
    setup.critical.result = False
    async with setup.client() as client:
        response = await client.get("/health/live")
        ietf = await client.get("/health/live", headers=HEALTH_JSON)
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert (ietf.status_code, ietf.json()["status"]) == (200, "pass")
    assert setup.critical.calls == 0


async def test_ready_follows_the_lifecycle() -> None:
    """/health/ready is 503 while starting, 200 once ready, and 503 from the moment shutdown
    begins, without touching a dependency while starting or shutting down."""
    s = Setup()
    check = Calls()
    s.registry.add_check("db", check)
    async with s.client() as client:
        starting = await client.get("/health/ready")
        assert check.calls == 0
        s.lifecycle.mark_ready()
        ready = await client.get("/health/ready")
        calls = check.calls
        s.lifecycle.begin_shutdown()
        stopping = await client.get("/health/ready")
        stopping_ietf = await client.get("/health/ready", headers=HEALTH_JSON)
    assert (starting.status_code, starting.json()["reason"]) == (503, "starting")
    assert ready.status_code == 200
    assert (stopping.status_code, stopping.json()["reason"]) == (503, "shutting_down")
    assert stopping_ietf.status_code == 503
    assert stopping_ietf.json()["status"] == "fail"
    assert check.calls == calls == 1
    await s.registry.aclose()


async def test_ready_depends_on_critical_checks_only(setup: Setup) -> None:
    """A non-critical dependency down keeps readiness 200; a critical one down makes it 503;
    readiness answers from the critical checks only, and never waits for the others (which
    it starts, for their metrics: tests/test_health.py)."""
    setup.optional.result = False
    hung = asyncio.Event()

    async def hangs() -> None:
        await hung.wait()

    setup.registry.add_check("peer", hangs, critical=False, timeout=30)
    async with setup.client() as client:
        degraded = await asyncio.wait_for(client.get("/health/ready"), 5)
        setup.critical.result = False
        down = await asyncio.wait_for(client.get("/health/ready"), 5)
    hung.set()
    assert degraded.status_code == 200
    assert down.status_code == 503
    assert down.json()["reason"] == "critical_dependency_unhealthy"
    assert [d["name"] for d in down.json()["dependencies"]] == ["db"]


async def test_full_report_keeps_the_seed_format(setup: Setup) -> None:
    """/health answers the seed's JSON (service, status, version, uptime_seconds, timestamp,
    dependencies[name, status, response_time_ms, last_check], metrics) plus critical/reason;
    degraded is 200, unhealthy is 503."""
    setup.optional.result = HealthStatus.DEGRADED
    async with setup.client() as client:
        degraded = await client.get("/health")
        setup.critical.result = False
        unhealthy = await client.get("/health")
    body = degraded.json()
    assert degraded.status_code == 200
    assert {
        "service",
        "status",
        "version",
        "uptime_seconds",
        "timestamp",
        "dependencies",
        "metrics",
    } <= body.keys()
    assert (body["service"], body["status"], body["version"]) == ("checkout", "degraded", "2.0.1")
    assert body["timestamp"].endswith("Z")
    cache = next(d for d in body["dependencies"] if d["name"] == "cache")
    keys = {"name", "status", "response_time_ms", "last_check", "critical", "reason"}
    assert cache.keys() == keys
    assert (cache["status"], cache["critical"], cache["reason"]) == ("degraded", False, "reported")
    assert body["metrics"]["dependencies_total"] == 2
    assert unhealthy.status_code == 503
    assert unhealthy.json()["status"] == "unhealthy"


async def test_health_json_follows_the_ietf_draft(setup: Setup) -> None:
    """``Accept: application/health+json`` gets pass/warn/fail, checks keyed
    ``name:responseTime`` holding arrays with observedValue/observedUnit/time/componentType,
    served as application/health+json; warn is 200 and fail is 503."""
    setup.optional.result = False
    async with setup.client() as client:
        warn = await client.get("/health", headers=HEALTH_JSON)
        setup.critical.result = False
        fail = await client.get("/health", headers={"accept": "application/health+json, */*"})
    assert warn.headers["content-type"] == "application/health+json"
    body = warn.json()
    assert (warn.status_code, body["status"], body["serviceId"]) == (200, "warn", "checkout")
    assert body["releaseId"] == "2.0.1"
    [cache] = body["checks"]["cache:responseTime"]
    assert cache["status"] == "fail"
    assert cache["output"] == "reported"
    assert cache["observedUnit"] == "ms"
    assert cache["componentType"] == "component"
    assert {"observedValue", "time"} <= cache.keys()
    assert body["checks"]["uptime"][0]["observedUnit"] == "s"
    assert (fail.status_code, fail.json()["status"]) == (503, "fail")


async def test_every_answer_is_no_store_and_head_has_no_body(setup: Setup) -> None:
    """All health answers carry ``Cache-Control: no-store``; HEAD gets headers and no body."""
    async with setup.client() as client:
        for path in ("/health", "/health/live", "/health/ready"):
            for headers in ({}, HEALTH_JSON):
                response = await client.get(path, headers=headers)
                assert response.headers["cache-control"] == "no-store"
            head = await client.head(path)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["cache-control"] == "no-store"


async def test_everything_else_reaches_the_app(setup: Setup) -> None:
    """Other paths, other methods on health paths, and lifespan events pass through."""
    async with setup.client() as client:
        assert (await client.get("/plans/1")).status_code == 418
        assert (await client.post("/health")).status_code == 418
        assert (await client.get("/health/")).status_code == 418
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await setup.app({"type": "lifespan"}, queue.get, send)
    assert setup.downstream.seen == [
        ("GET", "/plans/1"),
        ("POST", "/health"),
        ("GET", "/health/"),
        ("lifespan", ""),
    ]
    assert sent == [{"type": "lifespan.startup.complete"}]


async def test_custom_paths_and_root_path(setup: Setup) -> None:
    """Configured paths are used; a server that leaves ``root_path`` in ``path`` still
    matches."""
    s = Setup(path="/_health", live_path="/_live", ready_path="/_ready")
    s.lifecycle.mark_ready()
    transport = httpx.ASGITransport(app=s.app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/_live")).status_code == 200
        assert (await client.get("/api/_ready")).status_code == 200
        assert (await client.get("/health")).status_code == 418
    await s.registry.aclose()


@pytest.fixture
def served() -> Iterator[tuple[str, Setup]]:
    """The endpoints in a real uvicorn server on a free port (in a thread)."""
    s = Setup()
    s.lifecycle.mark_ready()
    s.registry.add_check("db", Calls())
    port = free_port()
    config = uvicorn.Config(s.app, port=port, log_config=None, lifespan="off")  # no dictConfig
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn")
    yield f"http://127.0.0.1:{port}", s
    server.should_exit = True
    thread.join(10)


def test_endpoints_under_real_uvicorn(served: tuple[str, Setup]) -> None:
    """Over real HTTP: ready 200 then 503 after begin_shutdown(); live stays 200."""
    url, s = served
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health").json()["dependencies"][0]["status"] == "healthy"
        s.lifecycle.begin_shutdown()
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
