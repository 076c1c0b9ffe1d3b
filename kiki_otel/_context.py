"""Request-scoped identity: the request id *is* the current trace id.

Correlation reads the span context's validity, not ``is_recording()``: a request that arrived
with ``sampled=0`` still has a real trace id, and its logs must still carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN_ID, INVALID_TRACE_ID, SpanContext, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = [
    "CURRENT",
    "IDS",
    "IDS_BY_NAME",
    "SPAN_CONTEXT_OF",
    "SPAN_CONTEXT_TUPLE",
    "SPAN_KEY",
    "SPAN_READERS",
    "client_request_id",
    "client_request_id_get",
    "current_get",
    "current_ids",
    "current_set",
    "current_span_context",
    "get_request_id",
    "get_span_context",
    "hex_ids",
    "ids_of",
    "mark_exception",
    "marked_span_context",
    "remember_hex_ids",
    "remember_ids",
    "span_context_of",
    "span_reader_of",
]

client_request_id: ContextVar[str | None] = ContextVar("kiki_client_request_id", default=None)
"""A client's own (allowlisted) X-Request-ID, kept beside ours for their log searches."""


def _span_key() -> str | None:
    """The context key under which the API keeps the current span, found through its API.

    None if ``set_span_in_context`` is not one key over the context it is given or
    ``get_current_span`` does not read that key back: then kiki's request path calls them.
    """
    span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    keys = list(trace.set_span_in_context(span, Context()))
    if len(keys) != 1 or trace.get_current_span(Context({keys[0]: span})) is not span:
        return None
    return keys[0]


SPAN_KEY = _span_key()
"""What ``trace.set_span_in_context`` sets and ``trace.get_current_span`` reads, for the
request path's lookups without their two calls each (None: make the calls)."""


def _current_var() -> ContextVar[Context] | None:
    """The context variable behind ``otel_context.get_current()``/``attach()``, if found.

    The API keeps the current context in one ``ContextVar`` of its runtime context (the
    default, ``contextvars_context``); reading or setting it directly skips two calls per
    use. Only taken when attaching a context through the API is seen in the variable, and
    ``get_current()`` reads the variable back; else None, and kiki calls the API.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if not isinstance(var, ContextVar):
        return None
    probe = Context({"kiki_otel.probe": True})
    token = otel_context.attach(probe)
    try:
        attached = var.get(None) is probe
    finally:
        otel_context.detach(token)
    before = var.set(probe)
    try:
        read_back = otel_context.get_current() is probe
    finally:
        var.reset(before)
    return var if attached and read_back else None


CURRENT = _current_var()
"""The API's current-context variable: ``CURRENT.get()`` is ``otel_context.get_current()``,
``CURRENT.set(ctx)`` is ``attach(ctx)``, and its token detaches (None: call the API)."""

TRACE_ID_MAX = 2**128 - 1
SPAN_ID_MAX = 2**64 - 1
"""The largest valid W3C ids (``SpanContext`` checks the same: see ``_tuple_layout``)."""


def _tuple_layout() -> bool:
    """True if an exact ``SpanContext`` is a tuple whose properties read its positions.

    The layout: ``(trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)``.
    Probed at the validity bounds: an API release that changes the layout or the validity
    rule turns the positional reads (and the direct span path) off.
    """
    state = trace.TraceState([("k", "v")])
    flags = TraceFlags(TraceFlags.SAMPLED)
    for trace_id, span_id in ((1, 1), (0, 1), (1, 0), (2**128 - 1, 2**64 - 1), (2**128, 2**64)):
        want = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)
        valid = (
            INVALID_TRACE_ID < trace_id <= TRACE_ID_MAX and INVALID_SPAN_ID < span_id <= SPAN_ID_MAX
        )
        got = tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, valid))
        if type(want) is not SpanContext or tuple(got) != tuple(want):
            return False
        named = (want.trace_id, want.span_id, want.is_remote, want.trace_flags, want.trace_state)
        if (*named, want.is_valid) != tuple(want):
            return False
    unset = SpanContext(1, 1, is_remote=False, trace_flags=flags, trace_state=None)
    return tuple(unset) == (1, 1, False, flags, DEFAULT_TRACE_STATE, True)


SPAN_CONTEXT_TUPLE = _tuple_layout()
"""Whether ``SpanContext`` fields may be read (and one built) by position: see ``_tuple_layout``."""

IdsOf = Callable[[Any], tuple[int, int, int, bool]]
IDS_BY_NAME: IdsOf = attrgetter("trace_id", "span_id", "trace_flags", "is_valid")
"""``(trace_id, span_id, trace_flags, is_valid)`` of any span context, through its properties."""
IDS: dict[type, IdsOf] = {SpanContext: itemgetter(0, 1, 3, 5)} if SPAN_CONTEXT_TUPLE else {}
"""The same four fields read by position, in C, for the exact ``SpanContext`` (its properties
are four Python calls): ``IDS.get(type(context), IDS_BY_NAME)(context)``."""

get_span_context: Callable[[Any], SpanContext] = methodcaller("get_span_context")
"""``span.get_span_context()``, called from C."""


def _field_readers() -> dict[type, Callable[[Any], SpanContext]]:
    """Span classes whose ``get_span_context()`` returns their ``_context`` field.

    The API's ``NonRecordingSpan`` and the SDK's ``_Span``: their method is one Python
    call that reads a field. Probed on an instance of each (a class whose method does
    anything else, or is patched, keeps its call).
    """
    classes: list[type] = [trace.NonRecordingSpan]
    try:
        from opentelemetry.sdk.trace import _Span

        classes.append(_Span)
    except ImportError:  # pragma: no cover - the SDK is a dependency
        pass
    probe = SpanContext(0xABC, 0xDEF, is_remote=False)
    read = attrgetter("_context")
    readers: dict[type, Callable[[Any], SpanContext]] = {}
    for kind in classes:
        try:
            span = kind(probe) if kind is trace.NonRecordingSpan else kind("probe", probe)
            if span.get_span_context() is probe and read(span) is probe:
                readers[kind] = read
        except (TypeError, AttributeError):  # pragma: no cover - another API/SDK shape
            continue
    return readers


SPAN_CONTEXT_OF: dict[type, Callable[[Any], SpanContext]] = _field_readers()
"""``SPAN_CONTEXT_OF.get(type(span), get_span_context)(span)``: the span's context, read
in C for the classes whose method only returns a field."""

SPAN_READERS: dict[type, Callable[[Any], SpanContext]] = {
    trace.NonRecordingSpan: get_span_context,
    **SPAN_CONTEXT_OF,
}
"""Exact types seen to be spans (``isinstance(span, Span)`` without the ABC's Python-level
hook), and how to read their span context. Only positive answers are kept, and an ABC
never takes one back."""

# The request path's methods of the objects above, bound once, for the modules that import
# them. On CPython 3.11 ``NAME.method()`` on a name imported from another module compiles
# to LOAD_ATTR + CALL (the compiler takes such a name for a module), and that LOAD_ATTR
# makes a bound method object on every call: ~12 a request, before these.
current_get: Callable[[], Context] = (
    CURRENT.get if CURRENT is not None else otel_context.get_current
)
"""``CURRENT.get`` (``otel_context.get_current`` without the variable)."""
current_set: Callable[[Context], Token[Context]] = (
    CURRENT.set if CURRENT is not None else otel_context.attach
)
"""``CURRENT.set`` (``otel_context.attach`` without the variable)."""
ids_of = IDS.get
"""``IDS.get``: ``ids_of(type(context), IDS_BY_NAME)(context)``."""
span_context_of = SPAN_CONTEXT_OF.get
"""``SPAN_CONTEXT_OF.get``."""
span_reader_of = SPAN_READERS.get
"""``SPAN_READERS.get``."""
client_request_id_get = client_request_id.get
"""``client_request_id.get``."""


def current_span_context() -> trace.SpanContext:
    """``trace.get_current_span().get_span_context()``, one lookup instead of three calls.

    Asked by the access line, each log line and each record. A value under ``SPAN_KEY``
    that is not a span gives ``INVALID_SPAN``'s context, as the API does.
    """
    if SPAN_KEY is None:
        return trace.get_current_span().get_span_context()
    span: Any = (CURRENT.get() if CURRENT is not None else otel_context.get_current()).get(SPAN_KEY)
    read = SPAN_READERS.get(type(span)) or span_reader(span)
    return read(span) if read is not None else trace.INVALID_SPAN_CONTEXT


def span_reader(span: object) -> Callable[[Any], SpanContext] | None:
    """How to read ``span``'s context if it is a span (``isinstance(span, Span)``), else None.

    ``SPAN_READERS.get(type(span)) or span_reader(span)``: the exact types already seen
    to be spans answer from the dict, without the ABC's check (a weak reference and two
    set lookups in C per call).
    """
    if span is None or not isinstance(span, trace.Span):
        return None
    kind = type(span)
    read = SPAN_CONTEXT_OF.get(kind, get_span_context)
    if len(SPAN_READERS) < 16:
        SPAN_READERS[kind] = read
    return read


_last_hex: tuple[object, tuple[str, str] | None] = (None, None)
"""The last span context given to :func:`hex_ids` and its ids: a request's log lines and
its access line share one span context (held here, so ``is`` cannot match a recycled id)."""


def hex_ids(context: trace.SpanContext) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of ``context`` as lowercase hex, None if it is invalid."""
    global _last_hex
    last, ids = _last_hex  # one tuple read: consistent across threads
    if context is not last:
        trace_id, span_id, _flags, valid = IDS.get(type(context), IDS_BY_NAME)(context)
        if not valid:
            _last_hex = (context, None)
            return None
        return remember_hex_ids(context, trace_id, span_id)
    return ids


def remember_hex_ids(context: trace.SpanContext, trace_id: int, span_id: int) -> tuple[str, str]:
    """The hex ids of a valid ``context`` (given its int ids), kept for :func:`hex_ids`.

    :func:`hex_ids` formats a span context's ids here the first time it is asked.
    """
    # format(x, "032x"), without the format-spec parser or str's % (cold code a request
    # would run only here and in the line's timestamp: ~150 L1 misses); ids are in range
    ids = (trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex())
    remember_ids(context, ids)
    return ids


def remember_ids(context: trace.SpanContext, ids: tuple[str, str]) -> None:
    """Keep ``ids``, the hex ids of a valid ``context``, for :func:`hex_ids`.

    The server span's ids are formatted once, with the response headers that carry them
    (``_http_server``); the request's log lines and its access line then find them here.
    """
    global _last_hex
    _last_hex = (context, ids)


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span as lowercase hex, or None outside a trace."""
    return hex_ids(current_span_context())


def get_request_id() -> str | None:
    """The current request id: the 32-hex trace id, or None outside any trace.

    Works wherever the OTel context flows: endpoints, dependencies, background tasks,
    ``asyncio.to_thread`` and ``run_in_threadpool`` (they copy context variables).
    """
    context = current_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


_MARK = "_kiki_otel_span_context"


def mark_exception(error: BaseException, span_context: trace.SpanContext) -> None:
    """Remember on ``error`` the request it escaped from.

    The server logs an exception that escapes the app ("Exception in ASGI application")
    after the middleware has left the request's context: the mark lets that line, and its
    OTel record, carry the request's ids. An exception whose ``__setattr__`` refuses is left
    unmarked; one already marked (by a nested request) keeps the innermost request.
    """
    try:
        if _MARK not in vars(error):
            setattr(error, _MARK, span_context)
    except Exception:  # noqa: S110 - a __setattr__ that refuses: the line goes unmarked
        pass


def marked_span_context(error: object) -> trace.SpanContext | None:
    """The span context :func:`mark_exception` left on ``error``, if any."""
    try:
        context = getattr(error, _MARK, None)
    except Exception:  # a hostile __getattr__
        return None
    return context if isinstance(context, trace.SpanContext) else None
