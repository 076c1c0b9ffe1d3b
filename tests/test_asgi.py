"""``direct_call``: what kiki's ASGI wrappers call to run the app they wrap."""

from __future__ import annotations

import functools
from typing import Any

import pytest

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
    twin = getattr(stack, "twin", stack)  # the C dispatch, when built, and its Python one
    assert type(twin.__self__) is LifespanHooks and twin.__func__ is LifespanHooks._dispatch
    assert stack is twin.__self__._native_dispatch or twin.__self__._native_dispatch is None


def _passed_on(calls: list[Any]) -> Any:
    """An inner app that records what it is given and answers a marker (no coroutine)."""

    def inner(scope: Any, receive: Any, send: Any) -> Any:
        calls.append(scope)
        return "inner"

    return inner


def _decisions(layer: Any, scopes: list[Any]) -> list[tuple[bool, bool]]:
    """For each scope: (the C dispatch passed it on, the Python ``_dispatch`` did)."""
    made = []
    for scope in scopes:
        results = []
        for dispatch in (layer._native_dispatch, layer._dispatch):
            result = dispatch(dict(scope) if isinstance(scope, dict) else scope, "r", "s")
            if hasattr(result, "close"):
                result.close()  # the layer's own coroutine, not run
            results.append(result == "inner")
        made.append((results[0], results[1]))
    return made


def _scopes(key: str, values: list[Any]) -> list[Any]:
    scopes: list[Any] = [{"type": "http", key: value} for value in values]
    scopes += [{"type": "http"}, {"type": "http", "path": "/x", "root_path": "/api"}]
    scopes += [{"type": "http", "path": "/x", "root_path": ""}, {"type": "http", "path": "/x"}]
    scopes += [{"type": "http", "path": "/x", "root_path": None}]
    return scopes


def test_the_health_layers_c_dispatch_decides_as_its_python_one() -> None:
    from kiki_otel._health_asgi import HealthEndpoints
    from kiki_otel._settings import HealthSettings

    calls: list[Any] = []
    registry: Any = None  # not read by the dispatch
    layer = HealthEndpoints(_passed_on(calls), registry=registry, settings=HealthSettings())
    if layer._native_dispatch is None:
        pytest.skip("the C module is not built here")
    paths = ["/health", "/health/live", "/health/ready", "/items/1", "", b"/health", None, 3]
    made = _decisions(layer, _scopes("path", paths))
    assert [c for c, _ in made] == [python for _, python in made]
    assert made[:4] == [(False, False)] * 3 + [(True, True)]
    assert layer._native_dispatch({"path": "/x", "type": "http"}, receive="r", send="s") == "inner"


@pytest.mark.parametrize("started", [False, True])
def test_the_lifespan_layers_c_dispatch_decides_as_its_python_one(started: bool) -> None:
    from kiki_otel._lifecycle import Lifecycle
    from kiki_otel._lifespan import LifespanHooks
    from kiki_otel._settings import ShutdownSettings
    from kiki_otel._shutdown import ShutdownCoordinator

    lifecycle = Lifecycle("ready" if started else "starting")
    calls: list[Any] = []
    layer = LifespanHooks(
        _passed_on(calls),
        lifecycle=lifecycle,
        shutdown=ShutdownCoordinator(ShutdownSettings(), lifecycle, {}),
    )
    if layer._native_dispatch is None:
        pytest.skip("the C module is not built here")
    layer._started = started  # False: a server without lifespan events, not yet serving
    assert layer._native_dispatch({"type": "http"}, "r", "s") == "inner"
    # a request passed on: serving means started (the Python one's, when not started yet)
    assert layer._started is True and lifecycle.state == "ready"
    layer._started = started
    scopes = _scopes("type", ["lifespan", "http", "websocket", b"http", None])
    made = _decisions(layer, scopes)
    assert [c for c, _ in made] == [python for _, python in made]
    assert made[0] == (False, False) and made[1] == (True, True)
