"""The direct histogram record aggregates exactly what ``Histogram.record`` would."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Histogram,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags

from kiki_otel import _fast_histogram
from kiki_otel._context import SPAN_KEY
from kiki_otel._fast_histogram import FastHistogram, fast_histogram
from tests.conftest import metric_points, trace_memory

BOUNDS = [0.005, 0.01, 0.05, 0.1, 0.2, 1.0]
VALUES = [0.001, 0.007, 0.03, 0.03, 0.15, 0.5, 2.0, 0.0, 0.2, 0.1]
ATTRS: list[dict[str, Any]] = [
    {"http.request.method": "GET", "http.route": "/a", "http.response.status_code": 200},
    {"http.request.method": "GET", "http.route": "/b", "http.response.status_code": 200},
    {
        "http.request.method": "POST",
        "http.route": "/a",
        "http.response.status_code": 500,
        "error.type": "500",
    },
]


@pytest.fixture(autouse=True, params=["c-aggregate", "python-aggregate"])
def aggregate_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: counts and exemplars stored by ``_speedups.histogram_aggregate``,
    and by the SDK's ``aggregate`` with the Python exemplar store (the C path off)."""
    from kiki_otel import _fast_histogram

    if request.param == "c-aggregate":
        if _fast_histogram._NATIVE is None:
            pytest.skip("the C module is not built here, or KIKI_OTEL_NO_SPEEDUPS is set")
    else:
        monkeypatch.setattr(_fast_histogram, "_NATIVE", None)
    return str(request.param)


@pytest.fixture(autouse=True, params=["c-record", "python-record"])
def record_path(request: pytest.FixtureRequest) -> str:
    """Every test twice more: each record through ``FastHistogram.call`` as the middleware
    makes it (C's ``histogram_record`` when built, given the current context's ids), and
    through ``FastHistogram.record`` (its Python twin) without them."""
    global _record_path
    if request.param == "c-record" and type(_probe_call()).__name__ != "HistogramRecord":
        pytest.skip("the C module is not built here, or KIKI_OTEL_NO_SPEEDUPS is set")
    _record_path = str(request.param)
    return _record_path


_record_path = "python-record"


def _probe_call() -> Any:
    fast = fast_histogram(
        MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("t").create_histogram("x")
    )
    assert fast is not None
    return fast.call


def _current() -> tuple[Any, ...] | None:
    """What the middleware passes: the current context, its span's ids and flags, for a
    span that is not ``INVALID_SPAN`` (its own span never is); None otherwise."""
    ctx = otel_context.get_current()
    span = trace.get_current_span(ctx)
    if span == INVALID_SPAN:
        return None
    ids = span.get_span_context()
    return (ctx, ids.trace_id, ids.span_id, ids.trace_flags)


def _rec(fast: FastHistogram, value: float, attributes: dict[str, Any]) -> None:
    if _record_path == "c-record":
        fast.call(value, attributes, _current())
    else:
        fast.record(value, attributes)


def _pair(reader: InMemoryMetricReader, **kw: Any) -> tuple[Histogram, FastHistogram]:
    """Two histograms on one provider: ``sdk`` takes the SDK path, ``fast`` ours."""
    meter = MeterProvider(metric_readers=[reader], **kw).get_meter("t")
    sdk = meter.create_histogram("sdk", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    fast = fast_histogram(
        meter.create_histogram("fast", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    )
    assert isinstance(sdk, Histogram) and fast is not None
    return sdk, fast


def _record_both(sdk: Histogram, fast: FastHistogram, rounds: int = 3) -> None:
    for _ in range(rounds):
        for attrs in ATTRS:
            for value in VALUES:
                sdk.record(value, dict(attrs))
                _rec(fast, value, dict(attrs))


def _summary(reader: InMemoryMetricReader, name: str) -> dict[Any, Any]:
    return {
        frozenset(p.attributes.items()): (p.count, p.sum, p.min, p.max, tuple(p.bucket_counts))
        for p in metric_points(reader, name)
    }


def test_same_points_as_the_sdk_path() -> None:
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    _record_both(sdk, fast)
    expected = _summary(reader, "sdk")
    assert len(expected) == len(ATTRS)
    assert _summary(reader, "fast") == expected
    assert len(fast._cache) == len(ATTRS)  # the direct path was taken after the first sight


def test_cumulative_points_keep_growing_across_collections() -> None:
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    _record_both(sdk, fast, rounds=1)
    first = _summary(reader, "fast")
    _record_both(sdk, fast, rounds=1)
    assert _summary(reader, "fast") == _summary(reader, "sdk")
    assert all(point[0] == 2 * first[key][0] for key, point in _summary(reader, "fast").items())


def test_delta_readers_take_the_sdk_path() -> None:
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    sdk, fast = _pair(reader)
    for _ in range(3):  # each collect throws the delta aggregations away
        _record_both(sdk, fast, rounds=1)
        points: dict[str, list[Any]] = {"fast": [], "sdk": []}
        data = reader.get_metrics_data()  # one collection for both: deltas reset on each
        assert data is not None
        for metric in data.resource_metrics[0].scope_metrics[0].metrics:
            points[metric.name] = [(p.attributes, p.count, p.sum) for p in metric.data.data_points]
        assert points["fast"] == points["sdk"] and len(points["fast"]) == len(ATTRS)
    assert fast._consumer is None and not fast._cache


def test_cardinality_overflow_takes_the_sdk_path() -> None:
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader, views=[View(instrument_name="*", aggregation_cardinality_limit=2)])
    _record_both(sdk, fast)
    assert _summary(reader, "fast") == _summary(reader, "sdk")
    assert len(fast._cache) < len(ATTRS)  # the overflowing set was never cached


def test_views_filtering_attributes_are_honoured() -> None:
    reader = InMemoryMetricReader()
    view = View(instrument_name="*", attribute_keys={"http.route"})
    sdk, fast = _pair(reader, views=[view])
    _record_both(sdk, fast)
    assert _summary(reader, "fast") == _summary(reader, "sdk")
    assert {k for key in _summary(reader, "fast") for k, _ in key} == {"http.route"}


def test_exemplars_link_the_current_span() -> None:
    reader = InMemoryMetricReader()
    _, fast = _pair(reader)
    tracer = TracerProvider().get_tracer("t")
    _rec(fast, 0.01, dict(ATTRS[0]))  # first sight: SDK path
    with tracer.start_as_current_span("req") as span:
        _rec(fast, 0.02, dict(ATTRS[0]))  # direct path
        trace_id = span.get_span_context().trace_id
    (point,) = metric_points(reader, "fast")
    assert trace_id in {e.trace_id for e in point.exemplars}


def test_sdk_internals_renamed_fall_back_without_losing_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)

    def moved(self: FastHistogram, attributes: dict[str, Any]) -> None:
        raise AttributeError("_instrument_view_instrument_matches")

    monkeypatch.setattr(FastHistogram, "_aggregations_for", moved)
    _record_both(sdk, fast)
    assert fast._consumer is None
    assert _summary(reader, "fast") == _summary(reader, "sdk")


def test_not_an_sdk_histogram() -> None:
    noop = metrics.NoOpMeterProvider().get_meter("t").create_histogram("h")
    assert fast_histogram(noop) is None


def test_a_disabled_meter_records_nothing() -> None:
    """Disabled the SDK's way (its meter configurator), after the path was cached."""
    from opentelemetry.sdk.metrics._internal import _disable_meter_configurator

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("t")
    fast = fast_histogram(
        meter.create_histogram("fast", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    )
    assert fast is not None
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(0)))
    with trace.use_span(span):  # (the C record's common case: a current span's ids)
        _rec(fast, 0.01, dict(ATTRS[0]))
        _rec(fast, 0.01, dict(ATTRS[0]))
        provider._set_meter_configurator(meter_configurator=_disable_meter_configurator)
        _rec(fast, 0.01, dict(ATTRS[0]))
    (point,) = metric_points(reader, "fast")
    assert point.count == 2


def test_an_sdk_is_enabled_other_than_the_inlined_one_is_left_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``record`` inlines ``_is_enabled`` only while the SDK's code is what it inlines."""
    from opentelemetry.sdk.metrics._internal.instrument import _Synchronous

    def is_enabled(self: Any) -> bool:
        return False

    assert _fast_histogram._sdk_is_enabled() is _Synchronous._is_enabled
    monkeypatch.setattr(_Synchronous, "_is_enabled", is_enabled)
    assert _fast_histogram._sdk_is_enabled() is None
    monkeypatch.setattr(_fast_histogram, "_SDK_IS_ENABLED", None)
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("t")
    assert fast_histogram(meter.create_histogram("h")) is None


class _EqualsAnySpan(NonRecordingSpan):
    """A span that says it equals every other one, INVALID_SPAN included."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = NonRecordingSpan.__hash__


class _AlwaysTraceBased(TraceBasedExemplarFilter):
    """A subclass: not the SDK's filter, so it is asked, not answered for."""

    def should_sample(self, *args: Any) -> bool:
        return True


@pytest.mark.parametrize(
    "exemplar_filter",
    [
        None,
        TraceBasedExemplarFilter(),
        AlwaysOnExemplarFilter(),
        AlwaysOffExemplarFilter(),
        _AlwaysTraceBased(),
    ],
    ids=["default", "trace-based", "always-on", "always-off", "subclass"],
)
@pytest.mark.parametrize("span_key", ["found", "unknown"])
def test_exemplars_are_the_sdks_in_every_context(
    exemplar_filter: Any, span_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace-based filter answered inline takes the same exemplars as the SDK's call:
    none outside a span, for an unsampled or invalid span or a non-span in the context;
    the span's ids for a sampled one (a recording span or a remote parent). Without a
    span key found through the API, the filter is called."""
    from kiki_otel import _fast_histogram

    if span_key == "unknown":
        monkeypatch.setattr(_fast_histogram, "SPAN_KEY", None)
    reader = InMemoryMetricReader()
    kw = {} if exemplar_filter is None else {"exemplar_filter": exemplar_filter}
    sdk, fast = _pair(reader, **kw)
    recording = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("req")

    def remote(flags: int) -> Any:
        return NonRecordingSpan(SpanContext(0xABC, 0xDEF, True, TraceFlags(flags)))

    empty = otel_context.Context()
    equal = _EqualsAnySpan(SpanContext(0xABC, 0xDEF, True, TraceFlags(1)))
    contexts = [  # one bucket of one point each: every exemplar survives to be compared
        (0, 0.001, empty),
        (0, 0.007, trace.set_span_in_context(recording, empty)),
        (0, 0.03, trace.set_span_in_context(remote(1), empty)),
        (0, 0.07, trace.set_span_in_context(remote(0), empty)),
        (0, 0.15, trace.set_span_in_context(INVALID_SPAN, empty)),
        (0, 0.5, otel_context.set_value(SPAN_KEY, "span?", empty)),
        (1, 0.001, trace.set_span_in_context(equal, empty)),  # == INVALID_SPAN: no exemplar
    ]
    for attrs in ATTRS[:2]:
        sdk.record(2.0, dict(attrs))
        _rec(fast, 2.0, dict(attrs))  # first sight: the SDK path; the rest are direct
    for which, value, ctx in contexts:
        token = otel_context.attach(ctx)
        try:
            sdk.record(value, dict(ATTRS[which]))
            _rec(fast, value, dict(ATTRS[which]))
        finally:
            otel_context.detach(token)
    assert fast._cache

    data = reader.get_metrics_data()  # once: a collection takes the exemplars
    assert data is not None
    exemplars: dict[str, list[Any]] = {"fast": [], "sdk": []}
    for scope in data.resource_metrics[0].scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                route = point.attributes["http.route"]
                exemplars[metric.name] += [
                    (route, e.value, e.trace_id, e.span_id) for e in point.exemplars
                ]
    got, want = sorted(exemplars["fast"]), sorted(exemplars["sdk"])
    assert got == want
    if exemplar_filter is None:
        ids = recording.get_span_context()
        assert got == [("/a", 0.007, ids.trace_id, ids.span_id), ("/a", 0.03, 0xABC, 0xDEF)]


def test_the_callers_ids_answer_only_while_its_context_is_current() -> None:
    """``record(..., current)``: the caller's context and its span's ids. While that
    context is the current one the exemplar takes those ids (sampled) or none (not
    sampled), as the SDK's filter reading the span would; once another context is current
    (an app that left its own span current), the filter reads that one's span."""
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    request = tracer.start_span("request")
    ids = request.get_span_context()
    ctx = trace.set_span_in_context(request, otel_context.Context())
    unsampled = NonRecordingSpan(SpanContext(0x1, 0x2, False, TraceFlags(0)))
    quiet_ctx = trace.set_span_in_context(unsampled, otel_context.Context())
    for attrs in ATTRS[:2]:  # first sight: the SDK path; the rest are direct
        sdk.record(2.0, dict(attrs))
        _rec(fast, 2.0, dict(attrs))
    cases = [  # (attached, the caller's current, value): one bucket each
        (ctx, (ctx, ids.trace_id, ids.span_id, int(ids.trace_flags)), 0.001),
        (quiet_ctx, (quiet_ctx, 0x1, 0x2, 0), 0.007),
    ]
    with tracer.start_as_current_span("the app's own") as own:
        cases.append((otel_context.get_current(), (ctx, ids.trace_id, ids.span_id, 1), 0.03))
    for attached, current, value in cases:
        token = otel_context.attach(attached)
        try:
            sdk.record(value, dict(ATTRS[0]))
            record = fast.call if _record_path == "c-record" else fast.record
            record(value, dict(ATTRS[0]), current)
        finally:
            otel_context.detach(token)
    found = _exemplars(reader)
    got = sorted((e[1], e[2], e[3]) for e in found["fast"] if e[0] == "/a")
    assert got == sorted((e[1], e[2], e[3]) for e in found["sdk"] if e[0] == "/a")
    mine = own.get_span_context()
    assert got == [(0.001, ids.trace_id, ids.span_id), (0.03, mine.trace_id, mine.span_id)]


def _exemplars(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()  # a collection takes the exemplars
    assert data is not None
    found: dict[str, list[Any]] = {"fast": [], "sdk": []}
    for scope in data.resource_metrics[0].scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:  # type: ignore[union-attr]
                found[metric.name] += [
                    (
                        point.attributes["http.route"],
                        e.value,
                        e.trace_id,
                        e.span_id,
                        e.filtered_attributes,
                        e.time_unix_nano > 0,
                    )
                    for e in point.exemplars  # type: ignore[union-attr]
                ]
    return found


def test_exemplars_offered_directly_are_the_reservoirs_own() -> None:
    """The exemplar the trace-based filter takes goes straight into the SDK's aligned
    reservoir: at, just below and just above every boundary, each bucket keeps the last
    measurement offered to it (span ids, value, the attributes a view filtered out) as
    the reservoir's own offer keeps it, over several collections."""
    from kiki_otel import _fast_histogram

    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="*", attribute_keys={"http.route"})],
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("t")
    sdk = meter.create_histogram("sdk", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    fast = fast_histogram(
        meter.create_histogram("fast", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    )
    assert isinstance(sdk, Histogram) and fast is not None
    assert _fast_histogram._BUCKET_FIELDS is not None
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    values = [b + d for b in BOUNDS for d in (-1e-4, 0.0, 1e-4)] + [0.0, 5.0]
    for collection in range(2):
        for round_ in range(2):  # the second round's spans replace the first's
            for value in values:
                for attrs in ATTRS:
                    with tracer.start_as_current_span(f"r{collection}{round_}"):
                        sdk.record(value, dict(attrs))
                        _rec(fast, value, dict(attrs))
        ((aggregation, reservoir, native), *_) = next(iter(fast._cache.values()))
        assert reservoir is aggregation._reservoir  # offered directly
        assert native is _fast_histogram._NATIVE  # in C where it is built
        found = _exemplars(reader)
        assert found["fast"]  # every bucket of every point holds one
        got = sorted(found["fast"], key=repr)
        assert got == sorted(found["sdk"], key=repr)  # both recorded in the same spans
        assert len(got) == 2 * (len(BOUNDS) + 1)  # /a and /b: every bucket holds one
        # /a's last measurement in each bucket was ATTRS[2]'s (a POST), /b's a GET
        assert {(e[0], e[4]["http.request.method"]) for e in got} == {("/a", "POST"), ("/b", "GET")}


def test_another_bucket_layout_is_offered_by_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket storing other fields, or a reservoir searching buckets otherwise: the
    reservoir's own offer, and still the same exemplars."""
    from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
        AlignedHistogramBucketExemplarReservoir,
    )

    from kiki_otel import _fast_histogram

    for patch in ("fields", "search"):
        with monkeypatch.context() as patched:
            if patch == "fields":
                patched.setattr(_fast_histogram, "_BUCKET_FIELDS", None)
            else:
                patched.setattr(
                    AlignedHistogramBucketExemplarReservoir,
                    "_find_bucket_index",
                    lambda self, value, *_: 0,  # every measurement in the first bucket
                )
            reader = InMemoryMetricReader()
            sdk, fast = _pair(reader)
            tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
            for value in VALUES * 2:
                with tracer.start_as_current_span("r"):
                    sdk.record(value, dict(ATTRS[0]))
                    _rec(fast, value, dict(ATTRS[0]))
            assert all(r is None for entry in fast._cache.values() for _a, r, _n in entry)
            found = _exemplars(reader)
            assert sorted(e[:2] for e in found["fast"]) == sorted(e[:2] for e in found["sdk"])
            assert found["fast"]


def test_the_c_aggregate_is_used_only_as_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C aggregate is probed against the SDK's own ``aggregate`` once: one that leaves
    a field otherwise (here: the max) is not used, and neither is it for a subclass of the
    SDK's aggregation or a patched ``aggregate``."""
    from types import SimpleNamespace

    from opentelemetry.sdk.metrics._internal.aggregation import (
        AggregationTemporality,
        _ExplicitBucketHistogramAggregation,
    )
    from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
        AlignedHistogramBucketExemplarReservoir,
    )

    from kiki_otel import _fast_histogram

    if _fast_histogram.speedups is None:
        pytest.skip("the C module is not built here, or KIKI_OTEL_NO_SPEEDUPS is set")
    real = _fast_histogram.speedups.histogram_aggregate

    def forgets_the_max(aggregation: Any, value: Any, *rest: Any) -> Any:
        held = aggregation._max
        done = real(aggregation, value, *rest)
        aggregation._max = held
        return done

    fake = SimpleNamespace(histogram_aggregate=forgets_the_max)
    monkeypatch.setattr(_fast_histogram, "speedups", fake)
    assert _fast_histogram._probe_native() == (None, None)
    monkeypatch.setattr(_fast_histogram, "speedups", SimpleNamespace(histogram_aggregate=real))
    native, sdk_aggregate = _fast_histogram._probe_native()
    assert native is real and sdk_aggregate is _ExplicitBucketHistogramAggregation.aggregate

    class Sub(_ExplicitBucketHistogramAggregation):
        pass

    args = ({}, AggregationTemporality.CUMULATIVE, 0, AlignedHistogramBucketExemplarReservoir)
    assert _fast_histogram._native_aggregate(Sub(*args, boundaries=[1.0])) is None
    exact = _ExplicitBucketHistogramAggregation(*args, boundaries=[1.0])
    if _fast_histogram._NATIVE is not None:  # the autouse fixture's C run
        assert _fast_histogram._native_aggregate(exact) is real
    monkeypatch.setattr(
        _ExplicitBucketHistogramAggregation, "aggregate", lambda self, m, s=True: None
    )
    assert _fast_histogram._native_aggregate(exact) is None


@pytest.mark.parametrize("declines", [0, 1])
def test_an_aggregate_that_declines_leaves_the_rest_to_the_python_loop(
    declines: int, record_path: str, aggregate_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two readers, so two aggregations per attribute set; the C aggregate of one of them
    hands back (as for a value it does not take). The first: the whole record is the
    twin's; the second: the first aggregation keeps its value and the Python loop
    aggregates the second from there. Either way both readers see what the SDK records."""
    if aggregate_path != "c-aggregate":
        pytest.skip("only the C aggregate hands back")
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    meter = MeterProvider(metric_readers=readers).get_meter("t")
    sdk = meter.create_histogram("sdk", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    fast = fast_histogram(
        meter.create_histogram("fast", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    )
    assert fast is not None
    sdk.record(2.0, dict(ATTRS[0]))
    _rec(fast, 2.0, dict(ATTRS[0]))  # first sight: learns both aggregations
    (aggregations,) = fast._cache.values()
    assert len(aggregations) == 2 and all(native is not None for _a, _r, native in aggregations)
    aggregation, reservoir, _native = aggregations[declines]
    aggregations[declines] = (aggregation, reservoir, lambda *args: False)
    starts: list[int] = []
    real = FastHistogram._aggregate_each

    def counted(self: FastHistogram, aggregations: Any, start: int, *rest: Any) -> None:
        starts.append(start)
        real(self, aggregations, start, *rest)

    monkeypatch.setattr(FastHistogram, "_aggregate_each", counted)
    recording = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("req")
    unsampled = NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(0)))
    for span in (recording, unsampled):
        with trace.use_span(span):
            for value in VALUES:
                sdk.record(value, dict(ATTRS[0]))
                _rec(fast, value, dict(ATTRS[0]))
    # C: from the aggregation that declined (the first: the twin's record, from 0); the
    # twin's own loop always starts at 0 and goes past one that declines
    assert starts == [declines if record_path == "c-record" else 0] * (2 * len(VALUES))
    for reader in readers:
        assert _summary(reader, "fast") == _summary(reader, "sdk")


@pytest.mark.own_process
def test_many_c_records_keep_no_memory(record_path: str) -> None:
    """Every object a record makes is freed (the C record's references counted right)."""
    import gc
    import sys
    import tracemalloc

    reader = InMemoryMetricReader()
    _sdk, fast = _pair(reader)
    attrs = dict(ATTRS[0])
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    with tracer.start_as_current_span("req"):
        sampled = _current()
    unsampled_span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(0)))
    with trace.use_span(unsampled_span):
        unsampled = _current()
    assert sampled is not None and unsampled is not None
    record = fast.call if record_path == "c-record" else fast.record
    for current in (sampled, unsampled):
        token = otel_context.attach(current[0])
        try:
            for _ in range(200):  # warm: the first sight, caches
                record(0.02, attrs, current)
            before = sys.getrefcount(attrs), sys.getrefcount(current)
            gc.collect()
            trace_memory()
            start = tracemalloc.take_snapshot()
            for _ in range(20_000):
                record(0.02, attrs, current)
            end = tracemalloc.take_snapshot()
        finally:
            otel_context.detach(token)
        mine = [
            tracemalloc.Filter(True, p) for p in (__file__, "*/kiki_otel/*", "*/opentelemetry/*")
        ]
        diff = end.filter_traces(mine).compare_to(start.filter_traces(mine), "filename")
        assert sum(d.size_diff for d in diff) < 20_000  # bytes: well under one per record
        # the last exemplar holds the attributes (sampled): one reference, either way
        assert sys.getrefcount(attrs) == before[0] and sys.getrefcount(current) == before[1]
    (point,) = metric_points(reader, "fast")
    assert point.count == 2 * (20_000 + 200)


def _many_sets() -> list[dict[str, Any]]:
    """More attribute sets than the C record's memo has slots, of every kind it meets."""
    sets: list[dict[str, Any]] = [
        {"http.request.method": "GET", "http.route": f"/r{i}", "http.response.status_code": code}
        for i in range(12)
        for code in (200, 404)
    ]
    sets += [
        {"http.request.method": "GET", "flag": True},  # a bool: not the memo's kind
        {"http.request.method": "GET", "flag": 1},  # equal to the bool's key in the cache
        {"http.request.method": "GET", "ratio": 0.5},
        {"http.response.status_code": 200, "http.request.method": "GET"},  # another order
        {},
    ]
    return sets


def test_many_attribute_sets_land_where_the_sdk_puts_them() -> None:
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    sets = _many_sets()
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(0)))
    with trace.use_span(span):  # the C record's common case: a current span's ids
        for round_ in range(4):
            for index, attrs in enumerate(sets):
                # equal strings that are other objects each time, as a server's scope has them
                fresh = {
                    "".join(list(k)): "".join(list(v)) if type(v) is str else v
                    for k, v in attrs.items()
                }
                value = VALUES[(index + round_) % len(VALUES)]
                sdk.record(value, dict(attrs))
                _rec(fast, value, fresh)
            if round_ == 1:
                fast._cache.clear()  # the memo's keys no longer the cache's: found again

    def typed(name: str) -> dict[Any, Any]:  # True, 1 and 1.0 kept apart, as the SDK keeps them
        return {
            tuple(sorted((k, type(v).__name__, v) for k, v in p.attributes.items())): (
                p.count,
                p.sum,
                tuple(p.bucket_counts),
            )
            for p in metric_points(reader, name)
        }

    assert typed("fast") == typed("sdk")
    assert len(typed("fast")) == len(sets)


def test_records_leave_the_cache_as_they_found_it() -> None:
    """The C record gives the cache back an entry it found with the memo's own key (so
    later lookups match by identity): the same keys, the very same aggregations."""
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    sets = _many_sets()
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(0)))
    with trace.use_span(span):
        for attrs in sets:
            sdk.record(0.5, dict(attrs))
            _rec(fast, 0.5, dict(attrs))  # (learned: the cache's entry made)
        learned = list(fast._cache.items())
        for _ in range(3):
            for attrs in sets:
                _rec(fast, 0.5, dict(attrs))
    assert sorted(fast._cache, key=repr) == sorted((k for k, _ in learned), key=repr)
    assert all(fast._cache[key] is aggregations for key, aggregations in learned)
    assert [p.count for p in metric_points(reader, "fast")] == [4] * len(sets)


def test_the_c_aggregate_waits_while_another_thread_holds_the_lock(aggregate_path: str) -> None:
    """The C aggregate skips taking the aggregation's lock only when no thread holds it;
    held (as ``collect`` holds it on the export thread), the record waits for it."""
    import threading

    if aggregate_path != "c-aggregate":
        pytest.skip("the C aggregate's lock")
    reader = InMemoryMetricReader()
    sdk, fast = _pair(reader)
    sdk.record(0.5, dict(ATTRS[0]))
    _rec(fast, 0.5, dict(ATTRS[0]))  # first sight: learns the aggregation
    ((aggregation, _reservoir, native),) = next(iter(fast._cache.values()))
    assert native is not None
    assert native(aggregation, 0.25, None, None, None)  # free: taken at once
    held = aggregation._sum
    with aggregation._lock:
        recorder = threading.Thread(target=native, args=(aggregation, 0.125, None, None, None))
        recorder.start()
        recorder.join(0.2)
        assert recorder.is_alive() and aggregation._sum == held  # waiting for the lock
    recorder.join(10)
    assert not recorder.is_alive() and aggregation._sum == held + 0.125
    sdk.record(0.25, dict(ATTRS[0]))
    sdk.record(0.125, dict(ATTRS[0]))
    assert _summary(reader, "fast") == _summary(reader, "sdk")


def test_plain_fields_only_for_attributes_no_descriptor_takes() -> None:
    from kiki_otel._native import plain_fields

    class Owner:
        kept = "class"

        @property
        def computed(self) -> str:
            return "property"

    class Slotted:
        __slots__ = ("value",)

    owner = Owner()
    owner.__dict__.update(kept="own", computed="shadowed", other=1)
    assert plain_fields(owner, ("kept", "other")) is vars(owner)  # a class attribute: shadowed
    assert plain_fields(owner, ("kept", "computed")) is None  # the property is what getattr reads
    assert plain_fields(owner, ("missing",)) is None
    assert plain_fields(Slotted(), ("value",)) is None
    assert plain_fields(None, ("kept",)) is None


def test_the_meter_config_is_read_inline_only_while_its_property_is_the_sdks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.metrics._internal import _ProxyMeterConfig

    def fresh() -> FastHistogram:
        meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("t")
        made = fast_histogram(meter.create_histogram("x"))
        assert made is not None
        return made

    held = fresh()._held()
    assert type(held[7]) is _ProxyMeterConfig and held[8] is vars(held[7])
    monkeypatch.setattr(_ProxyMeterConfig, "is_enabled", property(lambda self: True))
    assert fresh()._held()[7:] == (None, None)  # another property: read as it is
