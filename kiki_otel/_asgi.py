"""ASGI type aliases shared by our pure-ASGI wrappers (no starlette import needed for them)."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._native import speedups

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "direct_call", "native_dispatch"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def direct_call(app: ASGIApp) -> ASGIApp:
    """What a wrapper should call to run ``app``: its bound ``__call__``, or ``app`` itself.

    ASGI middlewares are instances of classes with a Python ``__call__``. CPython 3.11 calls
    such an instance through its generic path (``slot_tp_call``: a type lookup, a C-level
    call into a new interpreter frame, ~40 L1 cache misses of code bare runs once a
    request), and a bound method of a Python function through its specialised one (the
    frame pushed in the same interpreter loop). Bound once, when the wrapper is built: the
    class's ``__call__`` of that moment (a class patched later keeps the old one here).

    A kiki layer's ``_dispatch`` comes first: its ``__call__`` without a coroutine of its
    own, returning the one that runs the request (the inner app's, for a request the layer
    passes on). Its ``__call__`` stays a coroutine function, which a server checks for.
    A layer that made its ``_dispatch`` in C keeps it as ``_native_dispatch``.
    """
    own = getattr(app, "__dict__", None)
    native = own.get("_native_dispatch") if isinstance(own, dict) else None
    if native is not None:
        return native  # type: ignore[no-any-return]
    dispatch = getattr(type(app), "_dispatch", None)
    if isinstance(dispatch, types.FunctionType):
        bound_dispatch: ASGIApp = dispatch.__get__(app)
        return bound_dispatch
    for klass in type(app).__mro__:  # the raw attribute: a staticmethod must not be bound
        call = vars(klass).get("__call__")
        if call is not None:
            if isinstance(call, types.FunctionType):
                bound: ASGIApp = call.__get__(app)
                return bound
            break
    return app


def native_dispatch(
    layer: Any, key: str, taken: dict[str, Any], blank: str | None = None, ready: str | None = None
) -> ASGIApp | None:
    """``layer._dispatch`` in C (``_speedups.layer_dispatch``) when built, else None.

    What :func:`direct_call` finds as the layer's ``_native_dispatch``: ``layer._app(scope,
    receive, send)`` for an event whose ``scope[key]`` is a str not in ``taken``, whose
    ``scope[blank]`` (if given) is missing or empty and for which ``layer.<ready>`` (if
    given, an attribute of the layer's own) is True; the layer's ``_dispatch`` for any
    other, which decides again. Its Python frame is most of what an outer layer costs a
    request passed on (~1k instructions each).
    """
    native = getattr(speedups, "layer_dispatch", None)
    if native is None:
        return None
    fields = vars(layer) if ready is not None else None
    made: ASGIApp = native(layer._dispatch, layer._app, key, taken, blank, fields, ready)
    return made
