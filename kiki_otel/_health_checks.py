"""The built-in dependency checks: HTTP, Redis and SQL.

Each builder returns a :class:`BuiltCheck`: an async probe plus, when the check created a
client or pool itself, the coroutine that closes it (clients the user passed in stay the
user's to close). Drivers are imported lazily, so the base install needs neither; a missing
one becomes an ``ImportError`` naming the extra to install.

The probes are deliberately bare: the registry bounds them with its timeout, runs them
single-flight and turns exceptions into a status whose reason is the exception *class* only.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import redis.asyncio
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BuiltCheck", "CheckFailed", "http_check", "redis_check", "scrub", "sql_check"]

_SAFE_REASON = re.compile(r"[^A-Za-z0-9_.:-]")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_KEY_VALUE_SECRET = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token)\s*=\s*('[^']*'|\"[^\"]*\"|\S+)"
)


class CheckFailed(Exception):
    """Raise from a check to fail it with a short reason that is safe to show to anyone.

    The reason is reduced to ``[A-Za-z0-9_.:-]`` and 64 characters, because it appears in the
    anonymous health body and as a metric attribute (so it must also be low-cardinality).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = _SAFE_REASON.sub("_", reason)[:64] or "failed"


@dataclass(frozen=True, slots=True)
class BuiltCheck:
    """A ready-to-run probe, what kind of component it checks, and how to release what it owns."""

    probe: Callable[[], Awaitable[object]]
    component_type: str
    aclose: Callable[[], Awaitable[None]] | None = None


def scrub(text: str) -> str:
    """Remove URL credentials and ``password=...`` pairs: driver errors often echo the DSN."""
    return _KEY_VALUE_SECRET.sub(r"\1=***", _URL_USERINFO.sub(r"\1***@", text))


def http_check(
    url: str, *, timeout: float, expected_status: range, headers: Mapping[str, str] | None
) -> BuiltCheck:
    """GET ``url`` with a small client of its own; a status outside ``expected_status`` fails.

    Redirects are not followed (a redirect to a login page is not "healthy"). The client's
    own timeout is a backstop: the registry's timeout cancels the request first.
    """
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout * 2),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        headers=dict(headers or {}),
        follow_redirects=False,
    )

    async def probe() -> None:
        response = await client.get(url)
        if response.status_code not in expected_status:
            raise CheckFailed(f"http_{response.status_code}")

    return BuiltCheck(probe, "component", client.aclose)


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "add_redis() needs the Redis client: pip install 'kiki-otel[redis]'"
        ) from exc
    return aioredis


def redis_check(url_or_client: str | redis.asyncio.Redis, *, timeout: float) -> BuiltCheck:
    """PING Redis. A URL gets a client of our own that never retries (retries hide outages)."""
    if not isinstance(url_or_client, str):
        client = url_or_client

        async def ping_user_client() -> None:
            await client.ping()

        return BuiltCheck(ping_user_client, "datastore")
    aioredis = _import_redis()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    own = aioredis.Redis.from_url(
        url_or_client,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=4,
    )

    async def ping() -> None:
        await own.ping()

    async def close() -> None:
        await own.aclose()

    return BuiltCheck(ping, "datastore", close)


def _import_sqlalchemy() -> Any:
    try:
        import sqlalchemy.ext.asyncio as sa_async
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "add_sql() needs SQLAlchemy with an async driver: pip install 'kiki-otel[sql]'"
        ) from exc
    return sa_async


def _own_engine(engine_or_dsn: AsyncEngine | str, timeout: float) -> AsyncEngine:
    """Build an engine with a pool of its own: the probe never queues behind the app's pool.

    For a user engine we recreate its pool (same driver, creator and ``connect_args``, none of
    its connections). A plain ``postgresql://`` DSN gets asyncpg, the ``[sql]`` extra's driver.
    """
    sa_async = _import_sqlalchemy()
    from sqlalchemy.engine import make_url

    if not isinstance(engine_or_dsn, str):
        pool = engine_or_dsn.sync_engine.pool.recreate()
        engine: AsyncEngine = sa_async.create_async_engine(engine_or_dsn.url, pool=pool)
        return engine
    url = make_url(engine_or_dsn)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    engine = sa_async.create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeout)
    return engine


def sql_check(engine_or_dsn: AsyncEngine | str, *, timeout: float) -> BuiltCheck:
    """``SELECT 1`` on a connection from a small pool of our own.

    A pooled connection that died with a server restart fails once and is invalidated by
    SQLAlchemy; we retry that one case immediately so a recovered database reads healthy.
    """
    engine = _own_engine(engine_or_dsn, timeout)
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    select_one = text("SELECT 1")

    async def probe() -> None:
        for attempt in (1, 2):
            try:
                async with engine.connect() as conn:
                    await conn.execute(select_one)
                return
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    return BuiltCheck(probe, "datastore", engine.dispose)
