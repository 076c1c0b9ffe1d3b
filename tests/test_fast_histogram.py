"""The direct histogram record aggregates exactly what ``Histogram.record`` would."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import TracerProvider

from kiki_otel._fast_histogram import FastHistogram, fast_histogram
from tests.conftest import metric_points

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
                fast.record(value, dict(attrs))


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
    fast.record(0.01, dict(ATTRS[0]))  # first sight: SDK path
    with tracer.start_as_current_span("req") as span:
        fast.record(0.02, dict(ATTRS[0]))  # direct path
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
    reader = InMemoryMetricReader()
    _, fast = _pair(reader)
    fast.record(0.01, dict(ATTRS[0]))
    fast.record(0.01, dict(ATTRS[0]))
    fast._histogram._is_enabled = lambda: False  # type: ignore[attr-defined]
    fast.record(0.01, dict(ATTRS[0]))
    (point,) = metric_points(reader, "fast")
    assert point.count == 2
