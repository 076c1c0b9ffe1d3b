"""The direct request span is the SDK's span: same fields, same decisions, same wire bytes.

Each test builds spans both ways, ``DirectSpans`` and ``Tracer.start_span``/``end``, from
the same inputs, and compares everything but what differs by nature (ids, timestamps, the
lock object).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider, _Span
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

import kiki_otel
from kiki_otel._context import SPAN_KEY
from kiki_otel._fast_span import DirectSpans
from kiki_otel._http_server import ServerTelemetry
from kiki_otel._otlp_encode import Encoded, encode_span
from kiki_otel._otlp_http import FastSpanExporter, OTLPHttpClient
from tests.conftest import layer_of
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan

ATTRIBUTES: dict[str, Any] = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/items/3",
    "server.port": 8000,
    "http.request.header.x-request-id": ("client-1",),
}
PER_SPAN = {"_context", "_start_time", "_end_time", "_lock", "_record_end_metrics"}


def _parents() -> dict[str, otel_context.Context]:
    def remote(
        flags: int, state: TraceState | None = None, is_remote: bool = True
    ) -> otel_context.Context:
        parent = SpanContext(0xABC, 0xDEF, is_remote=is_remote, trace_flags=TraceFlags(flags))
        if state is not None:
            parent = SpanContext(0xABC, 0xDEF, is_remote, TraceFlags(flags), state)
        return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())

    return {
        "root": otel_context.Context(),
        "remote-sampled": remote(1),
        "remote-sampled-with-state": remote(1, TraceState([("vendor", "v1")])),
        "remote-not-sampled": remote(0),
        "remote-not-sampled-with-state": remote(0, TraceState([("vendor", "v2")])),
        "remote-sampled-random": remote(1 | 2),
        "local-sampled-with-state": remote(1, TraceState([("vendor", "v3")]), is_remote=False),
        "local-not-sampled": remote(0, is_remote=False),
        "invalid-span": trace.set_span_in_context(INVALID_SPAN, otel_context.Context()),
        "not-a-span": otel_context.set_value(SPAN_KEY, "span?", otel_context.Context()),
    }


def _compare(direct: Any, sdk: Any) -> None:
    """Same class and fields; ids differ, but the parent, flags and state are the same."""
    assert type(direct) is type(sdk)
    if not isinstance(sdk, _Span):
        assert set(vars(direct)) == set(vars(sdk))
        d, s = direct.get_span_context(), sdk.get_span_context()
        assert (d.trace_flags, d.trace_state, d.is_remote) == (
            s.trace_flags,
            s.trace_state,
            s.is_remote,
        )
        return
    assert set(vars(direct)) == set(vars(sdk))
    for name, value in vars(sdk).items():
        if name in PER_SPAN:
            continue
        got = vars(direct)[name]
        if name == "_attributes":
            assert list(got.items()) == list(value.items())
            assert set(vars(got)) == set(vars(value)) and type(got) is type(value)
            assert type(got._lock) is type(value._lock) and got._lock is not value._lock
            assert (got.dropped, type(got._dict)) == (value.dropped, type(value._dict))
            assert (got.maxlen, got.max_value_len, got._immutable) == (
                value.maxlen,
                value.max_value_len,
                value._immutable,
            )
        elif name in ("_events", "_links"):
            assert type(got) is type(value) and list(vars(got)) == list(vars(value))
            assert (list(got), got._dq.maxlen, got.dropped) == (
                list(value),
                value._dq.maxlen,
                value.dropped,
            )
            assert type(got._dq) is type(value._dq) and type(got._lock) is type(value._lock)
        else:
            assert got == value, name
    d, s = direct.context, sdk.context
    assert type(d) is SpanContext and len(d) == len(s)
    assert (d.trace_flags, d.trace_state, d.is_remote) == (s.trace_flags, s.trace_state, False)
    assert d.is_valid == s.is_valid
    if sdk.parent is not None:
        assert d.trace_id == s.trace_id  # the parent's trace
    assert direct.start_time is not None and direct.end_time is None


MIXED = ParentBased(
    ALWAYS_OFF,
    remote_parent_sampled=TraceIdRatioBased(0.0),
    remote_parent_not_sampled=ALWAYS_ON,
    local_parent_sampled=ALWAYS_OFF,
    local_parent_not_sampled=TraceIdRatioBased(1.0),
)
"""Every kind of parent decided otherwise than by default, static and called delegates mixed."""


@pytest.mark.parametrize(
    "sampler",
    [
        None,
        ALWAYS_OFF,
        ALWAYS_ON,
        TraceIdRatioBased(1.0),
        ParentBased(TraceIdRatioBased(0.0)),
        MIXED,
    ],
    ids=["default", "always-off", "always-on", "ratio-1", "parentbased-ratio-0", "mixed"],
)
@pytest.mark.parametrize("made_in", ["c", "c-objects", "python"])
def test_started_span_equals_the_sdk_span(
    sampler: Any, made_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every kind of parent and attribute-blind sampler: same span class and fields.

    Decisions of static samplers (alone or as a ParentBased delegate) are taken without
    the sampler's call: the parents cover each delegate, with and without trace state.
    The span started by the C module (``c``), by its twin ``start_open`` with the objects
    made in C (``c-objects``) and by the twin with its Python twins (``python``) alike."""
    from kiki_otel import _fast_span, _native

    if made_in == "python":
        monkeypatch.setattr(_fast_span, "new_instance", _native.new_instance_py)
        monkeypatch.setattr(_fast_span, "new_tuple", _native.new_tuple_py)
    elif _fast_span.new_instance is _native.new_instance_py:
        pytest.skip("the C module is not built here, or KIKI_OTEL_NO_SPEEDUPS is set")
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create({"service.name": "s"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("kiki_otel.http.server", "1.0")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None and direct.usable(len(ATTRIBUTES))
    if made_in == "c":
        assert type(direct.open).__name__ == "SpanOpen"
    else:
        direct.open = direct.start_open
    for label, ctx in _parents().items():
        got: Any = direct.start("GET", ctx, dict(ATTRIBUTES))
        want: Any = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
        _compare(got, want)
        if isinstance(want, _Span):
            assert got.parent == want.parent, label


class _TraceIds(IdGenerator):
    """Trace ids from a list, twice each (the direct span, then the SDK's)."""

    def __init__(self, trace_ids: list[int]) -> None:
        self._trace_ids = [i for i in trace_ids for _ in (0, 1)]

    def generate_trace_id(self) -> int:
        return self._trace_ids.pop(0)

    def generate_span_id(self) -> int:
        return 0x1234


def test_ratio_decisions_taken_inline_are_the_samplers() -> None:
    """A TraceIdRatioBased sampler (alone, or a ParentBased delegate, as with
    OTEL_TRACES_SAMPLER=parentbased_traceidratio) decides inline by the trace id's low 64
    bits against its bound: the same decision, flags and trace state as the SDK's call, at
    both sides of the bound, for new traces and for parents' trace ids. A patched
    should_sample is called."""
    half = TraceIdRatioBased(0.5)
    bound = half.bound
    around = [bound - 1, bound, bound + 1, (7 << 64) | (bound - 1), (7 << 64) | bound, 1]
    for sampler in (half, ParentBased(half, remote_parent_not_sampled=half)):
        provider = TracerProvider(
            sampler=sampler, id_generator=_TraceIds(around), shutdown_on_exit=False
        )
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        tracer = provider.get_tracer("kiki_otel.http.server", "1.0")
        direct = DirectSpans.for_tracer(tracer)
        assert direct is not None and direct._fixed[None] == bound  # taken inline
        decided = []
        for _ in around:
            got: Any = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
            want: Any = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=ATTRIBUTES)
            _compare(got, want)
            decided.append(got.get_span_context().trace_flags.sampled)
        assert decided == [True, False, False, True, False, True]
        for trace_id in around:  # a remote unsampled parent: its trace id decides
            state = TraceState([("vendor", "v")])
            parent = SpanContext(trace_id, 0xDEF, True, TraceFlags(0), state)
            ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
            got = direct.start("GET", ctx, dict(ATTRIBUTES))
            want = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
            _compare(got, want)
            assert got.get_span_context().trace_id == trace_id


@pytest.mark.parametrize(
    "sampler",
    [None, ALWAYS_OFF, TraceIdRatioBased(0.5), ParentBased(TraceIdRatioBased(0.5)), MIXED],
    ids=["default", "always-off", "ratio", "parentbased-ratio", "mixed"],
)
def test_the_c_open_draws_and_decides_as_the_sdk(
    sampler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_speedups.span_open`` against the SDK's ``start_span`` and against its twin
    ``start_open``, from the same random state: the same ids, flags, trace state and span
    (every kind of parent, ratio decisions at both sides of the bound over the seeds).
    A value under the span key that no span type seen before holds goes to the twin."""
    import random

    from kiki_otel import _fast_span

    if getattr(_fast_span.speedups, "span_open", None) is None:
        pytest.skip("the C module is not built here")
    twin_calls: list[Any] = []
    twin = DirectSpans.start_open

    def counted(self: Any, *args: Any) -> Any:
        twin_calls.append(args[1])
        return twin(self, *args)

    monkeypatch.setattr(DirectSpans, "start_open", counted)
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tracer = provider.get_tracer("kiki_otel.http.server", "1.0")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None and type(direct.open).__name__ == "SpanOpen"
    sampled = 0
    for seed in range(16):
        for ctx in _parents().values():
            random.seed(seed)
            got: Any = direct.open("GET", ctx, dict(ATTRIBUTES))
            random.seed(seed)
            want: Any = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
            random.seed(seed)
            again: Any = twin(direct, "GET", ctx, dict(ATTRIBUTES))
            context = tuple(got.get_span_context())
            assert context == tuple(want.get_span_context()) == tuple(again.get_span_context())
            _compare(got, want)
            _compare(got, again)
            sampled += got.get_span_context().trace_flags.sampled
    parents = _parents()
    assert len(twin_calls) == 16 and all(
        dict(ctx) == dict(parents["not-a-span"]) for ctx in twin_calls
    )
    if type(sampler) is TraceIdRatioBased:
        assert 0 < sampled < 16 * len(parents)  # both sides of the bound


def test_a_dropped_span_is_made_as_its_class_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C open makes a dropped span without calling ``NonRecordingSpan.__init__`` (held
    while it compiles to ``self._context = context``): the object the class makes. The
    class's ``__init__`` patched, and it is called."""
    from kiki_otel import _fast_span

    if getattr(_fast_span.speedups, "span_open", None) is None:
        pytest.skip("the C module is not built here")
    assert _fast_span._NON_RECORDING_INIT is NonRecordingSpan.__init__
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    direct = DirectSpans.for_tracer(provider.get_tracer("t"))
    assert direct is not None
    got = direct.open("GET", otel_context.Context(), dict(ATTRIBUTES))
    made = NonRecordingSpan(got.get_span_context())
    assert type(got) is NonRecordingSpan and vars(got) == vars(made) and not got.is_recording()
    calls: list[Any] = []
    original = NonRecordingSpan.__init__

    def counted(self: Any, context: Any) -> None:
        calls.append(context)
        original(self, context)

    monkeypatch.setattr(NonRecordingSpan, "__init__", counted)
    patched = direct.open("GET", otel_context.Context(), dict(ATTRIBUTES))
    assert calls == [patched.get_span_context()]


def test_a_patched_sampler_class_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline decisions assume the SDK's own should_sample: a patched one is called."""
    calls: list[int] = []
    original = TraceIdRatioBased.should_sample

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TraceIdRatioBased, "should_sample", counted)
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)), shutdown_on_exit=False)
    direct = DirectSpans.for_tracer(provider.get_tracer("t"))
    assert direct is not None and direct._fixed == {
        k: v for k, v in direct._fixed.items() if k is not None
    }
    direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    assert calls == [1]


def test_ended_spans_are_the_same_on_the_wire(receiver: OTLPReceiver) -> None:
    """Through the fast exporter to a real OTLP receiver: the direct span (queued as is by
    ``end``) decodes to the same span as the SDK's, events and status included."""
    provider = TracerProvider(resource=Resource.create({"service.name": "s"}))
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces")))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("kiki_otel.http.server", "1.0")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None and direct._batch is not None
    ctx = _parents()["remote-sampled-with-state"]

    def finish(span: Any, end: Any) -> None:
        span.update_name("GET /items/{item_id}")
        span.set_attribute("http.route", "/items/{item_id}")
        span.add_event("retry", {"attempt": 2})
        span.set_status(trace.StatusCode.ERROR, "boom")
        end()

    sdk_span = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    finish(sdk_span, sdk_span.end)
    direct_span = direct.start("GET", ctx, dict(ATTRIBUTES))
    direct.set_attributes(direct_span, {"http.response.status_code": 500})
    sdk_span_2 = tracer.start_span("x", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    sdk_span_2.set_attributes({"http.response.status_code": 500})
    finish(direct_span, lambda: direct.end(direct_span))
    finish(sdk_span_2, sdk_span_2.end)
    provider.force_flush()
    spans = receiver.wait_for_spans(3)

    def comparable(span: ReceivedSpan) -> dict[str, Any]:
        fields = dataclasses.asdict(span)
        for varying in ("span_id", "start_time_unix_nano", "end_time_unix_nano"):
            fields.pop(varying)
        fields["events"] = [(e["name"], e["attributes"]) for e in fields["events"]]
        return fields

    by_id = {s.span_id: s for s in spans}
    got = comparable(by_id[f"{direct_span.get_span_context().span_id:016x}"])
    want = comparable(by_id[f"{sdk_span_2.get_span_context().span_id:016x}"])
    assert got == want
    assert got["trace_state"] == "vendor=v1" and got["parent_span_id"] == f"{0xDEF:016x}"
    assert got["status_code"] == "ERROR" and got["events"] == [("retry", {"attempt": 2})]
    provider.shutdown()


def _queued_direct(provider: TracerProvider) -> tuple[TracerProvider, Any, Any, DirectSpans]:
    """``provider`` with one batch processor over the fast exporter (a dead port, a long
    delay: items stay queued), its tracer and that tracer's direct path."""
    exporter = FastSpanExporter(OTLPHttpClient("http://127.0.0.1:9/v1/traces"))
    batch = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider.add_span_processor(batch)
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    return provider, batch, tracer, direct


def test_end_is_the_sdks_for_misuse_and_for_other_consumers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second end() warns as the SDK's does and queues nothing twice; a processor added
    after setup gets its on_end (the SDK path from then on)."""
    provider, batch, tracer, direct = _queued_direct(TracerProvider(shutdown_on_exit=False))
    span = direct.start("GET", otel_context.Context(), {})
    direct.end(span)
    (queued,) = batch._batch_processor._queue
    assert queued.payload == encode_span(span).payload  # encoded as it ended
    assert not span.is_recording()
    direct.end(span)
    assert "ended span" in caplog.text
    assert len(batch._batch_processor._queue) == 1
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    assert not direct.usable(0)
    later = tracer.start_span("later")  # what the middleware does when usable() is False
    direct.end(later)
    assert [s.name for s in memory.get_finished_spans()] == ["later"]
    batch._batch_processor._queue.clear()


@pytest.mark.parametrize("how", ["close", "finish"])
def test_finish_is_set_attributes_then_end_in_one_call(
    caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The request span's last values go in as it ends: the span the SDK's update_name,
    set_attributes and end would leave (a key set again moves to the end), queued encoded.
    Ended: the SDK's three warnings, nothing changed or queued. Another consumer, a full
    count: the SDK's calls. Through the C ``close`` as through its twin ``finish``."""
    from kiki_otel import _fast_span

    limits = SpanLimits(max_span_attributes=4)
    provider, batch, tracer, direct = _queued_direct(
        TracerProvider(span_limits=limits, shutdown_on_exit=False)
    )
    if how == "close" and getattr(_fast_span.speedups, "span_close", None) is not None:
        assert type(direct.close).__name__ == "SpanClose"
    finish = getattr(direct, how)
    last = {"url.path": "/x", "http.route": "/x"}
    span: Any = direct.start("GET", otel_context.Context(), {"url.path": "/y", "a": 1})
    sdk: Any = tracer.start_span("GET", kind=SpanKind.SERVER, attributes={"url.path": "/y", "a": 1})
    finish(span, last, "GET /x", 123)
    sdk.update_name("GET /x")
    sdk.set_attributes(last)
    sdk.end(123)
    assert (span.name, span.end_time, list(span.attributes.items())) == (
        sdk.name,
        sdk.end_time,
        list(sdk.attributes.items()),
    )
    assert span._attributes._immutable and not span.is_recording()
    queue = batch._batch_processor._queue
    assert [type(item) for item in queue] == [ReadableSpan, Encoded]  # the SDK: its copy
    assert queue[-1].payload == encode_span(span).payload
    queue.clear()
    caplog.clear()
    finish(span, {"b": 2}, "again", 456)
    assert (span.name, span.end_time, "b" in span.attributes) == ("GET /x", 123, False)
    assert not queue and caplog.text.count("ended span") == 3
    full: Any = direct.start("GET", otel_context.Context(), {"a": 1, "b": 2, "c": 3})
    finish(full, {"d": 4, "e": 5}, None)  # one past the limit: the SDK drops the oldest
    assert list(full.attributes) == ["b", "c", "d", "e"] and full._attributes.dropped == 1
    assert len(queue) == 1
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    other: Any = tracer.start_span("other")
    finish(other, {"http.route": "/z"}, "GET /z")
    (ended,) = memory.get_finished_spans()
    assert (ended.name, dict(ended.attributes)) == ("GET /z", {"http.route": "/z"})
    batch._batch_processor._queue.clear()


def test_direct_path_only_when_nothing_could_tell() -> None:
    """Off for a value length limit, a disabled tracer, a full count; start-only (SDK end)
    with more than the one batch processor over the fast exporter."""
    limited = TracerProvider(
        span_limits=SpanLimits(max_span_attribute_length=5), shutdown_on_exit=False
    )
    assert DirectSpans.for_tracer(limited.get_tracer("t")) is None
    few = TracerProvider(span_limits=SpanLimits(max_span_attributes=2), shutdown_on_exit=False)
    direct = DirectSpans.for_tracer(few.get_tracer("t"))
    assert direct is not None and direct.usable(2) and not direct.usable(3)
    official = TracerProvider(shutdown_on_exit=False)
    official.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    direct = DirectSpans.for_tracer(official.get_tracer("t"))
    assert direct is not None and direct._batch is None
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None and direct.usable(1)
    tracer._tracer_config = type(tracer._tracer_config)(is_enabled=False)  # type: ignore[attr-defined]
    assert not direct.usable(1)


def test_unknown_span_fields_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK whose span has a field we do not set per span: the SDK path, not a half span."""
    from kiki_otel import _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert DirectSpans.for_tracer(tracer) is not None
    monkeypatch.setattr(_fast_span, "_SPAN_FIELDS", _fast_span._SPAN_FIELDS - {"_kind"})
    assert DirectSpans.for_tracer(tracer) is None


def test_each_span_has_its_own_event_and_link_lists() -> None:
    """The lists are made from empty ones of the limits' lengths: each span's are its own,
    hold what the SDK's would, and drop past the limit as the SDK's do."""
    provider = TracerProvider(
        span_limits=SpanLimits(max_events=2, max_links=1), shutdown_on_exit=False
    )
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    spans: list[Any] = [direct.start("GET", otel_context.Context(), dict(ATTRIBUTES)) for _ in "ab"]
    sdk: Any = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    for name in ("e1", "e2", "e3"):
        spans[0].add_event(name)
        sdk.add_event(name)
    assert [e.name for e in spans[0].events] == [e.name for e in sdk.events] == ["e2", "e3"]
    assert spans[0]._events.dropped == sdk._events.dropped == 1
    assert list(spans[1].events) == [] and spans[1]._events.dropped == 0
    assert spans[0]._events._lock is not spans[1]._events._lock
    assert spans[0]._links._dq is not spans[1]._links._dq
    assert (spans[1]._links._dq.maxlen, spans[1]._events._dq.maxlen) == (1, 2)
    assert all(not lst for lst in direct._empty_lists)


def test_another_bounded_list_layout_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiki_otel import _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    monkeypatch.setattr(_fast_span, "_LIST_FIELDS", _fast_span._LIST_FIELDS | {"_extra"})
    assert DirectSpans.for_tracer(tracer) is None


def test_a_span_new_other_than_the_sdks_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The span is made without calling ``Span.__new__``: only while that is the SDK's
    (which, for ``_Span``, is ``object.__new__``)."""
    from opentelemetry.sdk.trace import Span

    from kiki_otel import _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert _fast_span._SKIPPED_NEW is Span.__new__
    assert DirectSpans.for_tracer(tracer) is not None

    def counting_new(cls: type, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    monkeypatch.setattr(Span, "__new__", counting_new)
    assert DirectSpans.for_tracer(tracer) is None


async def test_requests_take_the_direct_path_and_arrive(receiver: OTLPReceiver) -> None:
    """Through configure(): the middleware uses the direct path end to end (start and
    queue), and the request spans arrive at a real receiver with the request ids and what
    the endpoint added to the current span."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        span = trace.get_current_span()  # the direct request span, as user code sees it
        span.set_attribute("app.item_id", item_id)
        span.add_event("item.loaded", {"cached": item_id % 2 == 0})
        return {"item_id": item_id}

    telemetry = kiki_otel.configure(
        app,
        service_name="svc",
        exporter_otlp_endpoint=f"http://127.0.0.1:{receiver.http_port}",
        metrics_exporter="none",
        logs_exporter="none",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ids = [(await client.get(f"/items/{i}")).headers["x-request-id"] for i in range(3)]
    stack: Any = app.middleware_stack
    while not isinstance(stack, ServerTelemetry):  # (the outermost: its bound _dispatch)
        stack = layer_of(stack).app
    assert stack._direct is not None and stack._direct._batch is not None
    telemetry.providers.tracer_provider.force_flush()  # type: ignore[attr-defined]
    spans = receiver.wait_for_spans(3)
    assert sorted(s.trace_id for s in spans) == sorted(ids)
    assert {s.name for s in spans} == {"GET /items/{item_id}"}
    assert all(s.attributes["http.response.status_code"] == 200 for s in spans)
    by_item = {s.attributes["app.item_id"]: s for s in spans}
    assert sorted(by_item) == [0, 1, 2]
    assert [(e.name, e.attributes) for e in by_item[2].events] == [
        ("item.loaded", {"cached": True})
    ]


@pytest.mark.parametrize("how", ["close", "finish"])
def test_an_encoder_failure_costs_no_span(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """If encoding at end() ever failed, the span is queued as it is and encoded at export.
    The C ``close`` hands a span it does not encode (one with an event) to the twin's
    ``_export``, which meets the failure."""
    from kiki_otel import _fast_span

    def broken(span: Any) -> Any:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(_fast_span, "encode_span", broken)
    if how == "finish":
        monkeypatch.setattr(_fast_span, "speedups", None)
    provider = TracerProvider(resource=Resource.create({"service.name": "s"}))
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces")))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    direct = DirectSpans.for_tracer(provider.get_tracer("t"))
    assert direct is not None
    assert type(direct.close).__name__ == (
        "SpanClose" if how == "close" and _fast_span.speedups is not None else "method"
    )
    span = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    span.add_event("retry")
    direct.end(span)
    provider.force_flush()
    (got,) = receiver.wait_for_spans(1)
    assert got.span_id == f"{span.get_span_context().span_id:016x}"
    assert got.attributes["url.path"] == "/items/3" and got.events[0].name == "retry"
    provider.shutdown()


class _Notes(StaticSampler):
    """Not attribute-blind: it keeps the attributes it was asked about."""

    def __init__(self) -> None:
        super().__init__(Decision.RECORD_AND_SAMPLE)
        self.seen: list[Any] = []

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.seen.append(kwargs.get("attributes", args[4] if len(args) > 4 else None))
        return super().should_sample(*args, **kwargs)


def test_a_sampler_set_on_the_tracer_later_decides() -> None:
    """The fixed decisions belong to the sampler seen at setup: another one decides, and,
    never checked attribute-blind, it is asked the SDK's way (attributes included)."""
    provider = TracerProvider(shutdown_on_exit=False)  # ParentBased(ALWAYS_ON)
    tracer: Any = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    for sampler in (ALWAYS_OFF, ParentBased(ALWAYS_OFF), MIXED):
        tracer.sampler = sampler
        for label, ctx in _parents().items():
            got: Any = direct.start("GET", ctx, dict(ATTRIBUTES))
            want: Any = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
            _compare(got, want)
            assert got.get_span_context().trace_flags == want.get_span_context().trace_flags, label
        if sampler is not MIXED:
            assert isinstance(direct.start("GET", otel_context.Context(), {}), NonRecordingSpan)
    tracer.sampler = notes = _Notes()
    direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    assert notes.seen == [ATTRIBUTES]


class _Ids(IdGenerator):
    """Ids out of the valid range: the span context says so, as the SDK's does."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.ids = (trace_id, span_id)

    def generate_trace_id(self) -> int:
        return self.ids[0]

    def generate_span_id(self) -> int:
        return self.ids[1]


@pytest.mark.parametrize("ids", [(2**128, 7), (7, 2**64), (0, 7), (7, 0), (2**128 - 1, 2**64 - 1)])
def test_span_context_validity_is_the_sdks(ids: tuple[int, int]) -> None:
    provider = TracerProvider(id_generator=_Ids(*ids), shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    got: Any = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    want: Any = tracer.start_span(
        "GET", otel_context.Context(), kind=SpanKind.SERVER, attributes=ATTRIBUTES
    )
    _compare(got, want)
    assert tuple(got.get_span_context()) == tuple(want.get_span_context())


def test_the_default_ids_are_the_sdks_from_the_same_random_state() -> None:
    """``RandomIdGenerator``'s code runs inline: the same draws from ``random``, in the same
    order (trace id, then span id), give the same ids, new trace or child of a parent."""
    import random

    from kiki_otel import _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None and _fast_span._RANDOM_IDS is type(tracer.id_generator)
    parent = trace.set_span_in_context(
        tracer.start_span("parent", otel_context.Context(), kind=SpanKind.SERVER)
    )
    for context in (otel_context.Context(), parent) * 50:
        seed = random.getrandbits(32)
        random.seed(seed)
        got: Any = direct.start("GET", context, dict(ATTRIBUTES))
        random.seed(seed)
        want: Any = tracer.start_span("GET", context, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
        assert tuple(got.get_span_context()) == tuple(want.get_span_context())
        _compare(got, want)


def test_an_id_generator_method_other_than_the_sdks_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The inline ids are only for the SDK's generator while its code is what runs inline:
    a changed method (a new release's) is probed off and then called, as is a subclass's."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    from kiki_otel import _fast_span
    from kiki_otel._probe import same_code

    def generate_trace_id(self: Any) -> int:
        return 5

    assert not same_code(generate_trace_id, _fast_span._SdkRandomIds.generate_trace_id)
    monkeypatch.setattr(RandomIdGenerator, "generate_trace_id", generate_trace_id)
    monkeypatch.setattr(_fast_span, "_RANDOM_IDS", None)  # what the probe then gives
    direct = DirectSpans.for_tracer(TracerProvider(shutdown_on_exit=False).get_tracer("t"))
    assert direct is not None
    span: Any = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    assert span.get_span_context().trace_id == 5
    monkeypatch.undo()

    class Fives(RandomIdGenerator):
        def generate_span_id(self) -> int:
            return 5

    tracer = TracerProvider(id_generator=Fives(), shutdown_on_exit=False).get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    span = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    assert span.get_span_context().span_id == 5


def test_another_span_context_layout_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The span context is built as a tuple only while that is what ``SpanContext`` builds."""
    from kiki_otel import _context, _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert DirectSpans.for_tracer(tracer) is not None
    assert _context._tuple_layout()
    monkeypatch.setattr(_context, "TRACE_ID_MAX", 2**64 - 1)  # a rule of ours differs
    assert not _context._tuple_layout()
    monkeypatch.setattr(_fast_span, "SPAN_CONTEXT_TUPLE", False)  # what the probe then gave
    assert DirectSpans.for_tracer(tracer) is None


def test_renaming_with_the_attributes_is_update_name_then_set_attributes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Live span: the SDK's name and attributes, in its order. Ended span or one not of
    ours: the SDK's own calls, so its warnings, in the same order, and nothing changed."""
    provider = TracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    ctx = _parents()["remote-sampled"]
    got: Any = direct.start("GET", ctx, dict(ATTRIBUTES))
    want: Any = tracer.start_span("GET", ctx, kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    late = {"http.route": "/items/{id}", "url.path": "/moved", "http.response.status_code": 200}
    direct.set_attributes(got, dict(late), "GET /items/{id}")
    want.update_name("GET /items/{id}")
    want.set_attributes(dict(late))
    assert got.name == want.name == "GET /items/{id}"
    assert list(got.attributes.items()) == list(want.attributes.items())
    assert list(got.attributes)[-3:] == list(late)  # url.path set again moved to the end
    got.end()
    want.end()

    def warnings(call: Any) -> list[str]:
        caplog.clear()
        call()
        return [r.getMessage() for r in caplog.records]

    said = warnings(lambda: direct.set_attributes(got, {"a": 1}, "late"))
    assert said == warnings(lambda: (want.update_name("late"), want.set_attributes({"a": 1})))
    assert len(said) == 2 and got.name == "GET /items/{id}" and "a" not in got.attributes
    unsampled = NonRecordingSpan(SpanContext(1, 2, False))
    assert warnings(lambda: direct.set_attributes(unsampled, {"a": 1}, "x")) == []


def test_the_span_keeps_the_callers_attribute_dict_in_the_sdks_container() -> None:
    """The attributes are the span's without a copy, in a BoundedAttributes that behaves as
    the SDK's own: it evicts past the limit, and freezes when the span ends."""
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=6), shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    attributes = dict(ATTRIBUTES)
    got: Any = direct.start("GET", otel_context.Context(), attributes)
    want: Any = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    assert got._attributes._dict is attributes
    for span in (got, want):
        span.set_attribute("a", 1)
        span.set_attribute("b", 2)  # the seventh: the oldest goes
    assert list(got.attributes.items()) == list(want.attributes.items())
    assert got._attributes.dropped == want._attributes.dropped == 1
    got.end()
    with pytest.raises(TypeError):
        got._attributes["c"] = 3


def test_a_samplers_own_attributes_come_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were an attribute-blind sampler to return attributes of its own (none does today),
    they would open the span's attributes, as in the SDK's span."""
    original = TraceIdRatioBased.should_sample

    def noting(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        attributes = kwargs.get("attributes", args[4] if len(args) > 4 else None)
        noted = {"sampler.note": "x", **(attributes or {})}
        return SamplingResult(result.decision, noted, result.trace_state)

    monkeypatch.setattr(TraceIdRatioBased, "should_sample", noting)
    provider = TracerProvider(sampler=TraceIdRatioBased(1.0), shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    got: Any = direct.start("GET", otel_context.Context(), dict(ATTRIBUTES))
    want: Any = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=ATTRIBUTES)
    _compare(got, want)
    assert next(iter(got.attributes)) == "sampler.note"
    attributes = dict(ATTRIBUTES)
    opened: Any = direct.start_open("GET", otel_context.Context(), attributes)
    attributes["added.later"] = 1  # still the span's dict: after the sampler's
    assert opened._attributes._dict is attributes
    assert list(opened.attributes) == ["sampler.note", *ATTRIBUTES, "added.later"]


def test_an_open_span_takes_attributes_until_it_is_handed_on(receiver: OTLPReceiver) -> None:
    """``start_open`` leaves the caller's dict in the span: what the caller adds before
    anything else sees the span is the span's, on the wire too. A dropped span is a
    ``NonRecordingSpan`` that keeps nothing; a sampler set later means the SDK's path."""
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces")))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer: Any = provider.get_tracer("t")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    attributes: dict[str, Any] = {"http.request.method": "GET"}
    span: Any = direct.start_open("GET", otel_context.Context(), attributes)
    attributes["url.path"] = "/items/3"
    direct.end(span)
    provider.force_flush()
    (got,) = receiver.wait_for_spans(1)
    assert got.attributes == {"http.request.method": "GET", "url.path": "/items/3"}
    tracer.sampler = ALWAYS_OFF
    assert direct.start_open("GET", otel_context.Context(), {}) is None
    provider.shutdown()
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    direct = DirectSpans.for_tracer(provider.get_tracer("t"))
    assert direct is not None
    dropped = direct.start_open("GET", otel_context.Context(), attributes)
    assert type(dropped) is NonRecordingSpan and dropped.get_span_context().is_valid


def test_the_span_key_is_the_apis() -> None:
    """Found through the API, it is the key the API itself keeps the current span under;
    without one the direct path is off."""
    from opentelemetry.trace.propagation import _SPAN_KEY

    assert SPAN_KEY == _SPAN_KEY


def test_no_span_key_no_direct_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiki_otel import _fast_span

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert DirectSpans.for_tracer(tracer) is not None
    monkeypatch.setattr(_fast_span, "SPAN_KEY", None)
    assert DirectSpans.for_tracer(tracer) is None


@pytest.mark.parametrize("how", ["c", "python"])
def test_the_sdks_own_span_metrics_count_direct_spans_as_its_spans(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """With the SDK's internal metrics on (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED), a
    direct span counts as started and live, and as no longer live once ended, as the
    SDK's own span does: for a new trace, a remote parent and a dropped span."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from kiki_otel import _fast_span

    if how == "python":
        monkeypatch.setattr(_fast_span, "speedups", None)
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    points = []
    for way in ("direct", "sdk"):
        reader = InMemoryMetricReader()
        provider = TracerProvider(
            sampler=ParentBased(ALWAYS_ON),
            meter_provider=MeterProvider(metric_readers=[reader], shutdown_on_exit=False),
            shutdown_on_exit=False,
        )
        _, batch, tracer, direct = _queued_direct(provider)
        if how == "c" and _fast_span.speedups is not None:
            assert type(direct.open).__name__ == "SpanOpen"
            assert type(direct.close).__name__ == "SpanClose"
        parents = _parents()
        for name in ("root", "remote-sampled", "remote-not-sampled", "root"):
            if way == "direct":
                span: Any = direct.start("GET", parents[name], dict(ATTRIBUTES))
                if name != "root":
                    direct.end(span)
            else:
                span = tracer.start_span("GET", parents[name], kind=SpanKind.SERVER)
                if name != "root":
                    span.end()
        batch._batch_processor._queue.clear()
        data = reader.get_metrics_data()
        points.append(
            sorted(
                (metric.name, sorted(point.attributes.items()), point.value)
                for resource in data.resource_metrics  # type: ignore[union-attr]
                for scope in resource.scope_metrics
                for metric in scope.metrics
                for point in metric.data.data_points  # type: ignore[union-attr]
            )
        )
    assert points[0] == points[1]
    live = [value for name, _, value in points[0] if name == "otel.sdk.span.live"]
    assert live == [2]  # the two roots never ended
