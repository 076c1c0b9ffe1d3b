"""The built-in dependency checks: HTTP, Redis and SQL.

Each builder returns a :class:`BuiltCheck`: an async probe plus, when the check created a
client or pool itself, the coroutine that closes it (clients the user passed in stay the
user's to close). A client we build belongs to the event loop that first uses it: on another
loop the probe builds a fresh one (see :class:`_PerLoop`). Drivers are imported lazily, so
the base install needs neither; a missing one becomes an ``ImportError`` naming the extra.

The probes are deliberately bare: the registry bounds them with its timeout, runs them
single-flight and turns exceptions into a status whose reason is the exception *class* only.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

if TYPE_CHECKING:
    import redis.asyncio
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BuiltCheck", "CheckFailed", "http_check", "redis_check", "scrub", "sql_check"]

_Client = TypeVar("_Client")

_SAFE_REASON = re.compile(r"[^A-Za-z0-9_.:-]")
# Up to the LAST "@" of the token: a raw "/" or "@" in a password must not end the match
# early (and leak the rest). An "@" later in a path is rare; over-redacting it is fine.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")
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


class _PerLoop(Generic[_Client]):
    """A client we built, used only on the event loop that first used it.

    asyncio connections belong to the loop that opened them; from another loop they fail
    ("Event loop is closed", "attached to a different loop"). Loops change under
    ``TestClient(app)`` without ``with``, per-test loops and repeated ``asyncio.run()``, so on
    a new loop we build a fresh client and drop the old one unclosed: closing it needs its
    own loop, which is usually gone (its sockets go with the garbage collector).
    """

    def __init__(
        self, build: Callable[[], _Client], close: Callable[[_Client], Awaitable[None]]
    ) -> None:
        self._build = build
        self._close = close
        self._client = build()  # now, so a bad URL or driver fails when the check is added
        self._loop: asyncio.AbstractEventLoop | None = None  # bound by the first use

    def current(self) -> _Client:
        """Return the client of the running loop, building one if the loop changed."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            self._client = self._build()
        self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the client on its own loop (or if never used); on any other loop drop it."""
        if self._loop is None or self._loop is asyncio.get_running_loop():
            await self._close(self._client)


def _type_name(value: object) -> str:
    cls = type(value)
    module = "" if cls.__module__ == "builtins" else f"{cls.__module__}."
    return module + cls.__qualname__


def _wrong_type(name: str, value: object, expected: str, sync_hint: str | None) -> TypeError:
    """A TypeError at add time, with a hint for the usual slips, instead of failing every probe."""
    if hasattr(value, "get_secret_value"):
        hint = "; call .get_secret_value() on the secret first"
    elif sync_hint is not None:
        hint = f"; {sync_hint}"
    else:
        hint = ""
    return TypeError(f"health check {name!r}: expected {expected}, got {_type_name(value)}{hint}")


def http_check(
    url: str, *, timeout: float, expected_status: range, headers: Mapping[str, str] | None
) -> BuiltCheck:
    """GET ``url`` with a small client of its own; a status outside ``expected_status`` fails.

    Redirects are not followed (a redirect to a login page is not "healthy"). The client's
    own timeout is a backstop: the registry's timeout cancels the request first.
    """

    def build() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(timeout * 2),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            headers=dict(headers or {}),
            follow_redirects=False,
        )

    client = _PerLoop(build, httpx.AsyncClient.aclose)

    async def probe() -> None:
        response = await client.current().get(url)
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


def _is_async_redis(value: object) -> bool:
    """redis.asyncio clients (whose ``ping`` returns an awaitable), or any async ``ping``."""
    aioredis = sys.modules.get("redis.asyncio")  # not imported: cannot be one of its clients
    if aioredis is not None and isinstance(value, (aioredis.Redis, aioredis.RedisCluster)):
        return True
    return inspect.iscoroutinefunction(getattr(value, "ping", None))


def redis_check(
    url_or_client: str | redis.asyncio.Redis, *, name: str, timeout: float
) -> BuiltCheck:
    """PING Redis. A URL gets a client of our own that never retries (retries hide outages)."""
    if not isinstance(url_or_client, str):
        if not _is_async_redis(url_or_client):
            sync = "use redis.asyncio.Redis, not the synchronous client"
            raise _wrong_type(
                name,
                url_or_client,
                "a redis:// URL string or a redis.asyncio client",
                sync if hasattr(url_or_client, "ping") else None,
            )
        client = url_or_client

        async def ping_user_client() -> None:
            await client.ping()

        return BuiltCheck(ping_user_client, "datastore")
    aioredis = _import_redis()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    def build() -> Any:
        return aioredis.Redis.from_url(
            url_or_client,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=4,
        )

    async def close(own: Any) -> None:
        await own.aclose()

    own = _PerLoop(build, close)

    async def ping() -> None:
        await own.current().ping()

    return BuiltCheck(ping, "datastore", own.aclose)


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


def _require_engine_or_dsn(name: str, value: object) -> None:
    if isinstance(value, str):
        return
    sa_async = sys.modules.get("sqlalchemy.ext.asyncio")  # not imported: not an AsyncEngine
    if sa_async is not None and isinstance(value, sa_async.AsyncEngine):
        return
    sa_engine = sys.modules.get("sqlalchemy.engine")
    is_sync = sa_engine is not None and isinstance(value, sa_engine.Engine)
    sync = "build it with sqlalchemy.ext.asyncio.create_async_engine" if is_sync else None
    raise _wrong_type(name, value, "a DSN string or a SQLAlchemy AsyncEngine", sync)


def sql_check(engine_or_dsn: AsyncEngine | str, *, name: str, timeout: float) -> BuiltCheck:
    """``SELECT 1`` on a connection from a small pool of our own.

    The engine is ours even for a user engine (a copy with its own pool), so it is rebuilt
    per event loop like our other clients. A pooled connection that died with a server
    restart fails once and is invalidated by SQLAlchemy; we retry that one case immediately
    so a recovered database reads healthy.
    """
    _require_engine_or_dsn(name, engine_or_dsn)
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    async def dispose(engine: AsyncEngine) -> None:
        await engine.dispose()

    engines = _PerLoop(lambda: _own_engine(engine_or_dsn, timeout), dispose)
    select_one = text("SELECT 1")

    async def probe() -> None:
        engine = engines.current()
        for attempt in (1, 2):
            try:
                async with engine.connect() as conn:
                    await conn.execute(select_one)
                return
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    return BuiltCheck(probe, "datastore", engines.aclose)
