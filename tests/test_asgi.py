"""``direct_call``: what kiki's ASGI wrappers call to run the app they wrap."""

from __future__ import annotations

import functools
from typing import Any

from kiki_otel._asgi import direct_call


class _App:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))


class _Sub(_App):
    """Inherits its ``__call__``."""


class _Static:
    @staticmethod
    async def __call__(scope: Any, receive: Any, send: Any) -> None:
        scope["static"] = True


async def _function(scope: Any, receive: Any, send: Any) -> None:
    scope["function"] = True


async def test_an_instance_is_called_through_its_bound_call() -> None:
    for app in (_App(), _Sub()):
        call = direct_call(app)
        assert call is not app and call.__self__ is app  # type: ignore[attr-defined]
        await call("scope", "receive", "send")  # type: ignore[arg-type]
        assert app.calls == [("scope", "receive", "send")]


async def test_anything_else_is_called_itself() -> None:
    static, partial = _Static(), functools.partial(_function)
    for app in (_function, static, partial):
        assert direct_call(app) is app  # type: ignore[arg-type]
    scope: dict[str, Any] = {}
    await direct_call(static)(scope, None, None)  # type: ignore[arg-type]
    assert scope == {"static": True}  # a static __call__ is not bound to the instance


async def test_a_kiki_layers_dispatch_comes_first_and_its_call_stays_a_coroutine() -> None:
    """kiki's layers are run through ``_dispatch`` (no coroutine of their own), the
    outermost one by the Starlette app it is installed in; the ``__call__`` a server is
    given still is a coroutine function and does the same."""
    import inspect

    from kiki_otel._health_asgi import HealthEndpoints
    from kiki_otel._http_server import ServerTelemetry
    from kiki_otel._lifespan import LifespanHooks

    for layer in (HealthEndpoints, ServerTelemetry, LifespanHooks):
        assert inspect.iscoroutinefunction(layer.__call__)
        assert not inspect.iscoroutinefunction(layer._dispatch)

    class Layer:
        def __init__(self, app: Any) -> None:
            self._app = direct_call(app)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self._dispatch(scope, receive, send)

        def _dispatch(self, scope: Any, receive: Any, send: Any) -> Any:
            scope["layer"] = True
            return self._app(scope, receive, send)

    inner = _App()
    layer = Layer(inner)
    call = direct_call(layer)
    assert call.__func__ is Layer._dispatch and call.__self__ is layer  # type: ignore[attr-defined]
    for run in (call, layer):
        scope: dict[str, Any] = {}
        await run(scope, "receive", "send")  # type: ignore[arg-type]
        assert scope == {"layer": True}
    assert inner.calls == [({"layer": True}, "receive", "send")] * 2


def test_an_instrumented_app_runs_the_outermost_layers_dispatch() -> None:
    from fastapi import FastAPI

    import kiki_otel
    from kiki_otel._lifespan import LifespanHooks

    app = FastAPI()
    kiki_otel.configure(app, metrics_exporter="none")
    stack: Any = app.build_middleware_stack()
    assert type(stack.__self__) is LifespanHooks and stack.__func__ is LifespanHooks._dispatch
