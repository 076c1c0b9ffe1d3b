"""The request path's direct reads of the API's current context and current span."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context, _RuntimeContext
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import kiki_otel
from kiki_otel import _context, _fast_histogram, _http_server
from kiki_otel._context import CURRENT, SPAN_KEY, current_span_context
from tests.conftest import Memory
from tests.test_http_server import client, make_app, server_spans


def test_current_is_the_apis_context_variable() -> None:
    """What the API attaches is in it, and what is set in it the API reads back."""
    assert CURRENT is not None
    attached = Context({"a": 1})
    token = otel_context.attach(attached)
    try:
        assert CURRENT.get() is attached
    finally:
        otel_context.detach(token)
    direct = Context({"b": 2})
    token = CURRENT.set(direct)
    try:
        assert otel_context.get_current() is direct
    finally:
        otel_context.detach(token)  # the API detaches a direct set's token too
    assert otel_context.get_current() is not direct


class _ThreadLocalRuntime(_RuntimeContext):
    """A runtime context that is not the default one (as ``OTEL_PYTHON_CONTEXT`` selects)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def attach(self, context: Context) -> object:
        previous = self.get_current()
        self._local.context = context
        return previous

    def get_current(self) -> Context:
        return getattr(self._local, "context", Context())

    def detach(self, token: object) -> None:
        self._local.context = token


def test_another_runtime_context_is_not_read_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", _ThreadLocalRuntime())
    assert _context._current_var() is None


async def test_requests_without_the_direct_variable(
    monkeypatch: pytest.MonkeyPatch, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the API called instead (no variable found), a request has the same span, ids
    on its access line and exemplar-bearing metric."""
    for module in (_context, _http_server, _fast_histogram):
        monkeypatch.setattr(module, "CURRENT", None)
    app: FastAPI = make_app()
    kiki_otel.configure(app, service_name="svc-ctx")
    capsys.readouterr()
    async with client(app) as c:
        # the second one through the histogram's direct path
        ids = [(await c.get("/items/7")).headers["x-request-id"] for _ in range(2)]
    request_id = ids[-1]
    spans = server_spans(memory)
    assert format(spans[-1].context.trace_id, "032x") == request_id
    access = [line for line in capsys.readouterr().out.splitlines() if '"http.request"' in line]
    assert len(access) == 2 and f'"trace_id":"{request_id}"' in access[-1]
    (point,) = memory.metric_points("http.server.request.duration")
    assert point.count == 2
    # one exemplar per bucket: the two requests' durations may fall in one or in two
    exemplars = {format(e.trace_id, "032x") for e in point.exemplars}
    assert request_id in exemplars and exemplars <= set(ids)
    assert otel_context.get_current().get(SPAN_KEY) is None  # detached after each


class _Virtual:
    """Not a subclass of ``trace.Span``; registered as one below."""

    def __init__(self, span_context: SpanContext) -> None:
        self._span_context = span_context

    def get_span_context(self) -> SpanContext:
        return self._span_context


@pytest.mark.parametrize("value", ["not a span", None, 42])
def test_current_span_context_of_what_is_not_a_span(value: Any) -> None:
    assert SPAN_KEY is not None
    token = otel_context.attach(otel_context.set_value(SPAN_KEY, value))
    try:
        assert current_span_context() is trace.INVALID_SPAN_CONTEXT
        assert trace.get_current_span().get_span_context() is trace.INVALID_SPAN_CONTEXT
    finally:
        otel_context.detach(token)


def test_current_span_context_of_any_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtual subclass of the ABC counts as a span, as for the API, once and after."""
    monkeypatch.setattr(_context, "SPAN_READERS", {NonRecordingSpan: _context.get_span_context})
    span_context = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1))
    virtual: Any = _Virtual(span_context)
    assert current_span_context() is trace.INVALID_SPAN_CONTEXT  # no span at all
    token = otel_context.attach(trace.set_span_in_context(virtual))
    try:
        assert current_span_context() is trace.INVALID_SPAN_CONTEXT  # not a span (yet)
        trace.Span.register(_Virtual)
        for _ in range(2):  # found by the ABC, then by its exact type
            assert current_span_context() is span_context
            assert trace.get_current_span().get_span_context() is span_context
        assert _Virtual in _context.SPAN_READERS
    finally:
        otel_context.detach(token)


class _Shifted(SpanContext):
    """A span context whose ids are not its tuple's: only its properties tell."""

    @property
    def trace_id(self) -> int:
        return 0xABC

    @property
    def span_id(self) -> int:
        return 0xDEF


@pytest.mark.parametrize(
    "context",
    [
        SpanContext(0x1234, 0x56, is_remote=True, trace_flags=TraceFlags(1)),
        SpanContext(0x1234, 0x56, is_remote=False, trace_flags=TraceFlags(0)),
        SpanContext(0, 0x56, is_remote=False),
        trace.INVALID_SPAN_CONTEXT,
        _Shifted(0x1234, 0x56, is_remote=False, trace_flags=TraceFlags(1)),
    ],
    ids=["remote-sampled", "local-unsampled", "invalid-trace-id", "invalid", "subclass"],
)
def test_positional_reads_are_the_properties(context: SpanContext) -> None:
    """The request path reads ``SpanContext`` fields by position (in C) for the exact class
    only, and gets what the properties give; any other class is read through them."""
    assert _context.SPAN_CONTEXT_TUPLE
    read = _context.IDS.get(type(context), _context.IDS_BY_NAME)
    want = (context.trace_id, context.span_id, context.trace_flags, context.is_valid)
    assert read(context) == want
    assert (read is _context.IDS_BY_NAME) is (type(context) is not SpanContext)
    ids = _context.hex_ids(context)
    assert ids == ((f"{want[0]:032x}", f"{want[1]:016x}") if context.is_valid else None)


def test_remembered_hex_ids_are_given_for_that_context_only() -> None:
    """The middleware hands over the server span's formatted ids; another context (a child
    span's, an equal copy) is formatted as before, and the "%x" text is format()'s."""
    context = SpanContext(2**128 - 1, 2**64 - 1, is_remote=False, trace_flags=TraceFlags(1))
    ids = _context.remember_hex_ids(context, 0xA, 0xB)  # not its ids: proves the cache
    assert ids == (format(0xA, "032x"), format(0xB, "016x"))
    assert _context.hex_ids(context) == ids
    copy = SpanContext(2**128 - 1, 2**64 - 1, is_remote=False, trace_flags=TraceFlags(1))
    assert _context.hex_ids(copy) == ("f" * 32, "f" * 16)
    small = SpanContext(1, 1, is_remote=False)
    assert _context.hex_ids(small) == (format(1, "032x"), format(1, "016x"))


def test_span_contexts_read_as_fields_are_the_methods() -> None:
    """The API's NonRecordingSpan and the SDK's span have their context read as a field;
    a subclass that overrides ``get_span_context`` is asked through it."""
    from opentelemetry.sdk.trace import TracerProvider, _Span

    assert set(_context.SPAN_CONTEXT_OF) == {NonRecordingSpan, _Span}
    sdk_span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("s")
    other = SpanContext(0x12, 0x34, is_remote=False, trace_flags=TraceFlags(1))

    class Overriding(NonRecordingSpan):
        def get_span_context(self) -> SpanContext:
            return other

    spans = [
        sdk_span,
        NonRecordingSpan(SpanContext(0xAB, 0xCD, is_remote=True)),
        Overriding(trace.INVALID_SPAN_CONTEXT),
    ]
    for span in spans:
        read = _context.SPAN_CONTEXT_OF.get(type(span), _context.get_span_context)
        assert read(span) is span.get_span_context()
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            for _ in range(2):  # found by isinstance, then by its exact type
                assert current_span_context() is span.get_span_context()
        finally:
            otel_context.detach(token)
    assert current_span_context() is trace.INVALID_SPAN_CONTEXT
    assert spans[2].get_span_context() is other
