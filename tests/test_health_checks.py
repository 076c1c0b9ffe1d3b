"""The built-in checks against REAL servers started by the suite: redis-server, PostgreSQL,
an HTTP dependency in its own uvicorn process, and a TCP port that never answers."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import warnings
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import structlog
from opentelemetry.metrics import NoOpMeterProvider
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from kiki_otel._health import HealthRegistry, HealthStatus
from kiki_otel._health_asgi import HealthEndpoints
from kiki_otel._health_checks import scrub
from kiki_otel._lifecycle import Lifecycle
from kiki_otel._settings import HealthSettings

if TYPE_CHECKING:
    from tests.support.services import HttpDependency, PostgresServer, RedisServer

pytestmark = pytest.mark.integration

Factory = Callable[..., HealthRegistry]
TTL = 0.2


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    """Registries (ready lifecycle, no-op metrics) closed after the test."""
    made: list[HealthRegistry] = []

    def factory(**settings: Any) -> HealthRegistry:
        registry = new_registry(**settings)
        made.append(registry)
        return registry

    yield factory
    for registry in made:
        await registry.aclose()


def new_registry(**settings: Any) -> HealthRegistry:
    """A registry with a ready lifecycle and no-op metrics; the caller closes it."""
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    return HealthRegistry(
        settings=HealthSettings(**settings),
        service_name="checkout",
        service_version="1",
        meter_provider=NoOpMeterProvider(),
        lifecycle=lifecycle,
    )


async def status_of(registry: HealthRegistry, name: str) -> tuple[HealthStatus, str | None]:
    result = {d.name: d for d in (await registry.report()).dependencies}[name]
    return result.status, result.reason


async def after_ttl(registry: HealthRegistry, name: str) -> tuple[HealthStatus, str | None]:
    await asyncio.sleep(TTL * 1.5)  # let the cached result expire: the next probe re-checks
    return await status_of(registry, name)


def client_for(registry: HealthRegistry) -> httpx.AsyncClient:
    app = HealthEndpoints(_not_found, registry=registry, settings=HealthSettings())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_redis_killed_then_restarted(make: Factory, redis_server: RedisServer) -> None:
    """Kill redis-server mid-run: within one TTL the critical check is unhealthy (service
    unhealthy) and the non-critical one makes it degraded; after a restart both are healthy."""
    registry = make(cache_ttl=TTL)
    registry.add_redis("cache", redis_server.url, critical=False)
    registry.add_redis("sessions", redis_server.url)
    assert (await registry.report()).status is HealthStatus.HEALTHY

    redis_server.kill()
    assert await after_ttl(registry, "cache") == (HealthStatus.UNHEALTHY, "ConnectionError")
    report = await registry.report()
    assert report.status is HealthStatus.UNHEALTHY
    assert not report.ready
    registry.remove("sessions")
    assert (await registry.report()).status is HealthStatus.DEGRADED

    redis_server.start()
    assert await after_ttl(registry, "cache") == (HealthStatus.HEALTHY, None)
    assert (await registry.report()).status is HealthStatus.HEALTHY


async def test_user_redis_client_is_used_and_left_open(
    make: Factory, redis_server: RedisServer
) -> None:
    """A client the user passes is pinged as is and not closed by ``aclose()`` (it is theirs)."""
    client = aioredis.Redis.from_url(redis_server.url)
    registry = make()
    registry.add_redis("cache", client)
    assert await status_of(registry, "cache") == (HealthStatus.HEALTHY, None)
    await registry.aclose()
    assert await client.ping() is True
    await client.aclose()


async def test_postgres_probe_does_not_queue_behind_a_saturated_app_pool(
    make: Factory, postgres_server: PostgresServer
) -> None:
    """With the app's only pooled connection checked out (pool_timeout 30 s), add_sql(engine)
    still answers healthy within its timeout: it uses a pool of its own."""
    app_engine = create_async_engine(
        postgres_server.dsn(), pool_size=1, max_overflow=0, pool_timeout=30
    )
    registry = make()
    registry.add_sql("postgres", app_engine)
    async with app_engine.connect():  # the app's pool is now exhausted
        assert await status_of(registry, "postgres") == (HealthStatus.HEALTHY, None)
    await app_engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgres_stopped_then_restarted(
    make: Factory, postgres_server: PostgresServer, driver: str
) -> None:
    """A database that goes down reads unhealthy (exception class only); once it is back the
    very next check reads healthy again (a dead pooled connection is replaced at once)."""
    registry = make(cache_ttl=TTL)
    registry.add_sql("postgres", postgres_server.dsn(driver))
    assert await status_of(registry, "postgres") == (HealthStatus.HEALTHY, None)
    postgres_server.kill()
    try:
        status, reason = await after_ttl(registry, "postgres")
        assert status is HealthStatus.UNHEALTHY
        assert reason in ("ConnectionRefusedError", "OperationalError", "OSError")
    finally:
        postgres_server.start()
    assert await after_ttl(registry, "postgres") == (HealthStatus.HEALTHY, None)


async def test_closing_beside_a_hung_database_is_bounded_and_concurrent(
    make: Factory, postgres_server: PostgresServer
) -> None:
    """At shutdown the checks' own clients close together under one budget: beside a hung
    (SIGSTOPped) database they were closed one after another, each given up to four check
    timeouts, which took the shutdown's whole cleanup timeout (an error line and an unclean
    report) for a cleanup the user never registered, and the later closes never ran."""
    registry = make(cache_ttl=TTL)
    registry.add_sql("orders", postgres_server.dsn())
    registry.add_sql("billing", postgres_server.dsn())
    assert await status_of(registry, "orders") == (HealthStatus.HEALTHY, None)
    assert await status_of(registry, "billing") == (HealthStatus.HEALTHY, None)
    postgres_server.pause()
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(registry.aclose(), 30)
    finally:
        postgres_server.resume()
    (abandoned,) = [e for e in logs if e["event"] == "health.close_abandoned"]
    assert abandoned["count"] == 2  # both were closing when the budget ran out


async def test_failures_never_leak_passwords_hosts_or_driver_messages(
    make: Factory, postgres_server: PostgresServer
) -> None:
    """A wrong password in a DSN, a check raising with a DSN in its message, and an HTTP URL
    with credentials: the bodies (both formats) carry no password, user, host, port or driver
    message; the log has the detail with credentials scrubbed."""
    secret = postgres_server.password
    leaky_dsn = postgres_server.dsn(password="Wr0ng-" + secret)
    registry = make()
    registry.add_sql("db", leaky_dsn)

    def raises_with_dsn() -> None:
        raise RuntimeError(f"cannot connect: {postgres_server.dsn()}")

    registry.add_check("raiser", raises_with_dsn, critical=False)
    registry.add_http("api", f"http://admin:{secret}@127.0.0.1:{postgres_server.port}/x")
    async with client_for(registry) as client:
        with structlog.testing.capture_logs() as logs:
            bodies = [
                (await client.get("/health")).text,
                (await client.get("/health", headers={"accept": "application/health+json"})).text,
                (await client.get("/health/ready")).text,
            ]
    for body in bodies:
        for leak in (secret, "kiki", "127.0.0.1", str(postgres_server.port), "password"):
            assert leak not in body
    assert '"reason":"RuntimeError"' in bodies[0]
    logged = repr(logs)
    assert secret not in logged
    assert "cannot connect" in logged


def test_scrub_removes_url_credentials_and_password_pairs() -> None:
    """Log details lose URL userinfo and ``password=...`` pairs (libpq style) before logging."""
    text = "postgresql://u:p%40ss@h/db and host=h password='a b' pwd=x token=abc"
    assert scrub(text) == "postgresql://***@h/db and host=h password=*** pwd=*** token=***"


async def test_http_dependency_status_and_single_flight(
    make: Factory, http_dependency: HttpDependency
) -> None:
    """1,000 concurrent /health/ready probes cause ONE request to the real HTTP dependency;
    when it starts answering 503 the check fails with reason ``http_503``."""
    registry = make(cache_ttl=TTL)
    registry.add_http("syncvalue", f"{http_dependency.base_url}/healthz")
    async with client_for(registry) as client:
        responses = await asyncio.gather(*(client.get("/health/ready") for _ in range(1000)))
    assert {r.status_code for r in responses} == {200}
    assert http_dependency.calls() == 1

    http_dependency.set_status(503)
    assert await after_ttl(registry, "syncvalue") == (HealthStatus.UNHEALTHY, "http_503")
    assert http_dependency.calls() == 2


async def test_http_expected_status_and_headers(
    make: Factory, http_dependency: HttpDependency
) -> None:
    """``expected_status`` decides what counts as up (a 404 can be fine for some services)."""
    registry = make()
    lenient = range(200, 500)
    registry.add_http("lenient", f"{http_dependency.base_url}/nope", expected_status=lenient)
    registry.add_http("strict", f"{http_dependency.base_url}/nope", headers={"x-probe": "1"})
    assert await status_of(registry, "lenient") == (HealthStatus.HEALTHY, None)
    assert await status_of(registry, "strict") == (HealthStatus.UNHEALTHY, "http_404")


async def test_hanging_dependencies_time_out_and_the_endpoint_answers(
    make: Factory, hanging_port: int
) -> None:
    """HTTP, Redis and PostgreSQL pointed at a socket that accepts and never answers: every
    check reports reason ``timeout`` and /health still answers (503, critical ones down)."""
    registry = make(timeout=0.2)
    registry.add_http("api", f"http://127.0.0.1:{hanging_port}/healthz")
    registry.add_redis("cache", f"redis://127.0.0.1:{hanging_port}/0")
    registry.add_sql("db", f"postgresql://u:pw@127.0.0.1:{hanging_port}/db")
    async with client_for(registry) as client:
        response = await client.get("/health")
    assert response.status_code == 503
    reasons = {d["name"]: d["reason"] for d in response.json()["dependencies"]}
    assert reasons == {"api": "timeout", "cache": "timeout", "db": "timeout"}


def test_missing_sync_driver_fails_at_add_time(make: Factory) -> None:
    """A DSN whose driver is not async is refused when the check is added, not at probe time."""
    registry = make()
    with pytest.raises(Exception, match="async"):
        registry.add_sql("db", "sqlite:///x.db")


async def test_checks_make_no_spans_under_configure(
    memory: Any, http_dependency: HttpDependency
) -> None:
    """Under configure() (httpx instrumented, /health excluded from traces) an HTTP check
    produces no client span: checks run with instrumentation suppressed, so probes do not
    litter the trace store with orphan root spans."""
    from fastapi import FastAPI

    import kiki_otel

    app = FastAPI()
    telemetry = kiki_otel.configure(app, service_name="checkout")
    telemetry.health.add_http("syncvalue", f"{http_dependency.base_url}/healthz")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/health")
    assert response.json()["dependencies"][0]["status"] == "healthy"
    assert http_dependency.calls() == 1
    urls = [str(s.attributes.get("url.full")) for s in memory.spans()]
    assert any("/control/count" in url for url in urls)  # httpx IS instrumented (our calls())
    assert not any("/healthz" in url for url in urls)  # but the check made no span


async def statuses(registry: HealthRegistry) -> dict[str, tuple[HealthStatus, str | None]]:
    return {d.name: (d.status, d.reason) for d in (await registry.report()).dependencies}


def test_built_in_checks_stay_healthy_on_every_event_loop(
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    http_dependency: HttpDependency,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Probed from successive event loops (each ``asyncio.run()`` is what ``TestClient(app)``
    without ``with``, per-test loops or a worker script do), the checks built from URLs stay
    healthy, and ``aclose()`` on yet another loop logs no error: clients bound to a dead loop
    are rebuilt, and dropped rather than closed on the wrong loop."""
    registry = new_registry(cache_ttl=0)
    registry.add_redis("cache", redis_server.url)
    registry.add_sql("asyncpg", postgres_server.dsn("asyncpg"))
    registry.add_sql("psycopg", postgres_server.dsn("psycopg"))
    registry.add_http("api", f"{http_dependency.base_url}/healthz")
    healthy = dict.fromkeys(["cache", "asyncpg", "psycopg", "api"], (HealthStatus.HEALTHY, None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)  # "coroutine ... never awaited"
        for _ in range(3):
            assert asyncio.run(statuses(registry)) == healthy
        asyncio.run(registry.aclose())
        gc.collect()  # dropped clients are collected here, not in a later test
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == []


def test_a_user_redis_client_is_not_rebuilt_on_a_new_loop(redis_server: RedisServer) -> None:
    """A client the user passes stays theirs on every loop: pinged as is, never replaced."""
    client = aioredis.Redis.from_url(redis_server.url)
    pinged: list[object] = []

    async def ping() -> bool:
        pinged.append(client)
        return True

    client.ping = ping  # type: ignore[method-assign]
    registry = new_registry(cache_ttl=0)
    registry.add_redis("cache", client)
    for _ in range(2):
        assert asyncio.run(statuses(registry)) == {"cache": (HealthStatus.HEALTHY, None)}
    asyncio.run(registry.aclose())
    assert pinged == [client, client]


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("postgresql://app:S3cr/et99@db:5432/app", "postgresql://***@db:5432/app"),
        ("http://user:S3cr@et99@host", "http://***@host"),
        ("redis://:S3cr@et/99@cache:6379/0 failed", "redis://***@cache:6379/0 failed"),
        ("see http://h/x and amqp://u:p/q@mq:5672/", "see http://h/x and amqp://***@mq:5672/"),
    ],
)
def test_scrub_hides_passwords_with_an_unencoded_slash_or_at(text: str, scrubbed: str) -> None:
    """A password with a raw ``/`` or ``@`` (a common slip) is hidden up to the last ``@``."""
    assert scrub(text) == scrubbed


async def test_unencoded_password_never_reaches_an_error_or_the_log(make: Factory) -> None:
    """``add_http`` refuses a URL whose password holds a raw ``/`` without echoing it, and a
    check failing with such a DSN in its message logs it scrubbed."""
    registry = make()
    with pytest.raises(ValueError, match="api") as refused:
        registry.add_http("api", "http://admin:S3cr/et99@api.internal:8080/health")
    assert "et99" not in str(refused.value)

    def fails() -> None:
        raise ConnectionError("could not connect to postgresql://app:S3cr/et99@db:5432/app")

    registry.add_check("db", fails)
    with structlog.testing.capture_logs() as logs:
        assert await status_of(registry, "db") == (HealthStatus.UNHEALTHY, "ConnectionError")
    assert "could not connect" in repr(logs)
    assert "et99" not in repr(logs)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (None, "NoneType"),
        (b"redis://localhost/0", "bytes"),
        (SecretStr("redis://localhost/0"), r"get_secret_value\(\)"),
        (redis.Redis.from_url("redis://localhost/0"), "redis.asyncio"),
    ],
    ids=["None", "bytes", "SecretStr", "sync-client"],
)
def test_add_redis_refuses_what_it_cannot_ping(make: Factory, value: object, hint: str) -> None:
    """Anything but a URL string or an async client is refused when added, naming the check
    and the type (with a hint for the usual slips), instead of failing every probe later."""
    registry = make()
    with pytest.raises(TypeError, match="'cache'") as refused:
        registry.add_redis("cache", value)  # type: ignore[arg-type]
    assert re.search(hint, str(refused.value))
    assert type(value).__name__ in str(refused.value)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (None, "NoneType"),
        (SecretStr("postgresql://u:p@h/db"), r"get_secret_value\(\)"),
        (create_engine("sqlite://"), "create_async_engine"),
    ],
    ids=["None", "SecretStr", "sync-engine"],
)
def test_add_sql_refuses_what_it_cannot_query(make: Factory, value: object, hint: str) -> None:
    """Anything but a DSN string or an ``AsyncEngine`` is refused with a TypeError naming the
    check and the type (not an AttributeError from deep inside)."""
    registry = make()
    with pytest.raises(TypeError, match="'db'") as refused:
        registry.add_sql("db", value)  # type: ignore[arg-type]
    assert re.search(hint, str(refused.value))
    assert type(value).__name__ in str(refused.value)
