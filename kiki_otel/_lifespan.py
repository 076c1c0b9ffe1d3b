"""Hooks shutdown into the ASGI lifespan, keeping the app's own startup/shutdown.

Under uvicorn, SIGTERM ends the process right after lifespan shutdown without running
atexit handlers, so the flush must happen here, before ``lifespan.shutdown.complete`` is
passed on. We never install signal handlers; we only warn when someone displaced the
server's own, because then uvicorn's drain never runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ._asgi import ASGIApp, Message, Receive, Scope, Send, direct_call, native_dispatch
from ._lifecycle import Lifecycle
from ._logging import OwnLogger, reclaim_server_loggers
from ._shutdown import ShutdownCoordinator

__all__ = ["LifespanHooks", "foreign_signal_handlers"]

log = OwnLogger("kiki_otel.lifecycle")
_SERVER_MODULES = ("uvicorn", "gunicorn", "uvicorn_worker", "hypercorn", "granian")


def _owner(handler: Any) -> str:
    owner = getattr(handler, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(handler, "__module__", "")
    return str(module or "")


def foreign_signal_handlers() -> dict[str, str]:
    """SIGTERM/SIGINT handlers that belong to neither the server nor Python's defaults."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    foreign = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if handler in (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler):
            continue
        owner = _owner(handler)
        if not owner.startswith(_SERVER_MODULES):
            foreign[sig.name] = f"{owner}.{getattr(handler, '__qualname__', handler)!s}"
    return foreign


class LifespanHooks:
    """Outermost ASGI wrapper: marks ready after startup, runs shutdown before it completes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: Lifecycle,
        shutdown: ShutdownCoordinator,
        on_started: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self._app = direct_call(app)
        self._lifecycle = lifecycle
        self._shutdown = shutdown
        self._on_started = on_started  # e.g. health's background refresh, on the server's loop
        self._lifespan_seen = False
        self._started = False  # past "starting" (then requests skip the check)
        self._warned_restart = False
        # _dispatch in C when built: what the layer outside calls (_asgi.direct_call)
        self._native_dispatch = native_dispatch(self, "type", {"lifespan": None}, ready="_started")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._dispatch(scope, receive, send)

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The event's coroutine: the app's for a request, :meth:`_lifespan`'s for lifespan.

        No coroutine of its own: what a Starlette app runs as its middleware stack (see
        ``Telemetry.instrument_app``) and ``_asgi.direct_call`` binds; in C when built
        (``_native_dispatch``: a request the layer has seen start passed on, all else here).
        """
        if scope["type"] != "lifespan":
            if not self._started:
                # A server without lifespan events: serving means started. The lifecycle
                # only moves forward, so once past starting this is never asked again.
                if not self._lifespan_seen and self._lifecycle.state == "starting":
                    self._lifecycle.mark_ready()
                self._started = self._lifespan_seen or self._lifecycle.state != "starting"
            return self._app(scope, receive, send)
        return self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._lifespan_seen = True
        reclaim_server_loggers()  # a server's logging set up after configure(), see there
        if self._lifecycle.shutting_down and not self._warned_restart:
            self._warn_restart()

        received: list[str] = []  # the events the app took, and answered
        answered: list[str] = []

        async def receive_hooked() -> Message:
            message = await receive()
            received.append(message["type"])
            if message["type"] == "lifespan.shutdown":
                await self._shutdown.begin()
            return message

        async def send_hooked(message: Message) -> None:
            kind = message["type"]
            answered.append(kind)
            if kind == "lifespan.startup.complete":
                if self._on_started is not None:
                    await self._on_started()
                self._lifecycle.mark_ready()
                foreign = foreign_signal_handlers()
                if foreign:
                    log.warning(
                        "lifecycle.signal_handlers_displaced",
                        handlers=foreign,
                        hint="the server's graceful drain will not run on SIGTERM",
                    )
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._shutdown.run()
            await send(message)

        try:
            await self._app(scope, receive_hooked, send_hooked)
        except Exception as error:
            if answered:  # a lifespan the app speaks: its failure is the server's to see
                raise
            await self._speak_lifespan(received, receive_hooked, send_hooked, error)
            return
        if not answered:  # returned without a word (an app that ignores lifespan scopes)
            await self._speak_lifespan(received, receive_hooked, send_hooked, None)

    async def _speak_lifespan(
        self,
        received: list[str],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        error: Exception | None,
    ) -> None:
        """The lifespan of an app that has none (a bare ASGI app, Django's handler), ours.

        The ASGI spec has the server carry on without lifespan events when the app raises
        on the lifespan scope, and uvicorn does the same when it returns: then nothing
        calls the shutdown on SIGTERM, and uvicorn re-raises the signal past the atexit
        flush, so the last spans and log records were lost. Spoken here instead, the
        server's shutdown event runs the shutdown as for any app.
        """
        log.info(
            "lifecycle.lifespan_for_the_app",
            error=None if error is None else f"{type(error).__name__}: {error}"[:200],
            hint="the app does not take ASGI lifespan events: kiki-otel answers them, so "
            "shutdown still flushes",
        )
        if "lifespan.startup" not in received:
            await receive()  # the startup event (kept in received)
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass  # (no other lifespan event exists; a server's own would be ignored)
        await send({"type": "lifespan.shutdown.complete"})

    def _warn_restart(self) -> None:
        """Say, once, that a lifespan after shutdown runs without telemetry.

        Shutdown is one-way: SDK providers cannot be restarted once shut down and the health
        registry has closed its clients, so re-arming would mean rebuilding everything
        ``configure()`` built. The usual cause is one ``with TestClient(app):`` per test.
        """
        self._warned_restart = True
        log.warning(
            "lifecycle.started_after_shutdown",
            state=self._lifecycle.state,
            hint=(
                "telemetry was shut down when the first lifespan ended: readiness stays 503 "
                "and kiki-otel's own providers export nothing more. In tests, call "
                "kiki_otel.testing.reset() and configure() a new app for each test, or keep "
                "one TestClient open for the whole session"
            ),
        )
