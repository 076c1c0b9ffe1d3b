"""A histogram record that skips the SDK's per-call measurement plumbing once it is safe.

``Histogram.record`` in the SDK costs ~8-12 us a call, of which the aggregation itself (bucket
update plus exemplar offer) is ~2 us: the rest is building a frozen ``Measurement`` dataclass
whose ``__post_init__`` re-validates every attribute value, copying and hashing the attribute
dict again per reader, and the dict lookups that find the aggregation. The request histogram
records the same few attribute sets (method, route, status...) over and over, with values this
package built itself, so after the SDK has aggregated an attribute set once we keep the SDK's
own aggregation objects for it and hand them later measurements directly: the same buckets,
sums and exemplars (the provider's exemplar filter still decides), in a quarter of the time.

Only the cases where that is provably the same are taken: an SDK histogram, cumulative
aggregation (a delta reader throws aggregations away on collect), no cardinality overflow, and
the provider's readers unchanged since the objects were found. Anything else, including an SDK
release that renames what is read here, takes ``Histogram.record`` as before.

The SDK's default exemplar filter (``trace_based``) is asked inline: its ``should_sample`` is
``trace.get_current_span(context)`` and the span's sampled flag, two calls and a property
that cost more than the answer. Any other filter, or a subclass, is called.

When that filter samples, the exemplar goes straight into the SDK's reservoir too: the
histogram's default reservoir (``AlignedHistogramBucketExemplarReservoir``) keeps the last
measurement per bucket, and offering one costs ~10 Python calls (~18k instructions a
request: its lock, a linear bucket search, then ``get_current_span`` again and four
properties) to store six fields. The same six fields are stored in the same bucket, under
the same lock, with the ids the filter just read. Only for the SDK's exact reservoir and
bucket classes, with the bucket's fields and bucket search probed once (``_bucket_fields``,
``_same_buckets``); anything else is offered by the SDK.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import INVALID_SPAN, Span, TraceFlags

from ._context import CURRENT, IDS, IDS_BY_NAME, SPAN_CONTEXT_OF, SPAN_KEY, get_span_context

__all__ = ["FastHistogram", "fast_histogram"]

_new_tuple = tuple.__new__
_SAMPLED = TraceFlags.SAMPLED


class _Measurement(NamedTuple):
    """Duck-typed ``opentelemetry.sdk.metrics`` ``Measurement``: what aggregations read.

    A named tuple built with ``tuple.__new__``: no Python frame to make one, and its
    fields read in C.
    """

    value: float
    time_unix_nano: int
    instrument: Any
    context: Any
    attributes: Any


class FastHistogram:
    """``record(value, attributes)`` for one histogram, direct to its aggregations when safe."""

    __slots__ = ("_cache", "_consumer", "_histogram", "_storages", "_trace_based")

    def __init__(self, histogram: metrics.Histogram) -> None:
        from opentelemetry.sdk.metrics import TraceBasedExemplarFilter

        # (with no span key known, every filter is called)
        self._trace_based: Any = TraceBasedExemplarFilter if SPAN_KEY is not None else None
        self._histogram = histogram
        self._consumer: Any = getattr(histogram, "_measurement_consumer", None)
        self._storages: Any = None
        # attribute items -> (aggregation, reservoir offered directly or None) of every
        # reader for that attribute set
        self._cache: dict[tuple[tuple[str, Any], ...], list[tuple[Any, Any]]] = {}

    def record(self, value: float, attributes: dict[str, Any]) -> None:
        """Record ``value`` (finite, >= 0: a duration) with ``attributes`` (str/int values)."""
        consumer = self._consumer
        if consumer is None:
            self._histogram.record(value, attributes)
            return
        key = tuple(attributes.items())
        aggregations = self._cache.get(key)
        if (
            aggregations is None
            or consumer._reader_storages is not self._storages
            or not self._histogram._is_enabled()  # type: ignore[attr-defined]
        ):
            self._histogram.record(value, attributes)
            self._learn(key, attributes)
            return
        now = time.time_ns()
        ctx = CURRENT.get() if CURRENT is not None else otel_context.get_current()
        exemplar_filter = consumer._sdk_config.exemplar_filter
        # what a bucket's offer() stores, when the exemplar goes in directly
        offered: tuple[float, int, dict[str, Any], int, int, bool] | None = None
        if type(exemplar_filter) is self._trace_based:  # its should_sample, inline:
            # trace.get_current_span(ctx); SPAN_KEY is not None here (see __init__)
            span = ctx.get(SPAN_KEY)  # type: ignore[arg-type]
            if not isinstance(span, Span) or span == INVALID_SPAN:
                sample = False
            else:  # span.get_span_context().trace_flags.sampled, the fields read in C
                context = SPAN_CONTEXT_OF.get(type(span), get_span_context)(span)
                trace_id, span_id, flags, _valid = IDS.get(type(context), IDS_BY_NAME)(context)
                sample = bool(flags & _SAMPLED)
                if sample:
                    offered = (value, now, attributes, span_id, trace_id, True)
        else:
            sample = exemplar_filter.should_sample(value, now, attributes, ctx)
        measurement = _new_tuple(_Measurement, (value, now, self._histogram, ctx, attributes))
        if offered is None:
            for aggregation, _reservoir in aggregations:
                aggregation.aggregate(measurement, sample)
            return
        for aggregation, reservoir in aggregations:
            if reservoir is None:
                aggregation.aggregate(measurement, True)
                continue
            aggregation.aggregate(measurement, False)  # counts; the exemplar below
            with reservoir._lock:  # what its offer() stores, where it stores it
                bucket = reservoir._reservoir_storage[bisect_left(reservoir._boundaries, value)]
                bucket.__dict__.update(zip(_BUCKET_FIELDS, offered, strict=True))  # type: ignore[arg-type]

    def _learn(self, key: tuple[tuple[str, Any], ...], attributes: dict[str, Any]) -> None:
        """Find the SDK aggregations that just took ``attributes``; cache them if it is safe."""
        try:
            found = self._aggregations_for(attributes)
        except (AttributeError, ImportError, TypeError):  # SDK internals moved: stay slow
            self._consumer = None
            found = None
        if found is None:
            self._cache.pop(key, None)
            return
        storages, aggregations = found
        if storages is not self._storages:
            self._cache.clear()
            self._storages = storages
        self._cache[key] = aggregations

    def _aggregations_for(
        self, attributes: dict[str, Any]
    ) -> tuple[Any, list[tuple[Any, Any]]] | None:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import (
            _hash_attributes,
        )

        consumer = self._consumer
        if consumer is None:
            return None
        storages = consumer._reader_storages
        aggregations: list[Any] = []
        for storage in storages.values():
            for match in storage._instrument_view_instrument_matches.get(self._histogram, ()):
                if match._reset_on_collect:  # delta: aggregations are replaced on collect
                    self._consumer = None
                    return None
                keys = match._view._attribute_keys
                seen = (
                    attributes
                    if keys is None
                    else {k: v for k, v in attributes.items() if k in keys}
                )
                aggregation = match._attributes_aggregation.get(_hash_attributes(seen))
                if aggregation is None:  # overflowed the cardinality limit: SDK path
                    return None
                aggregations.append((aggregation, _direct_reservoir(aggregation)))
        return storages, aggregations


def _bucket_fields() -> tuple[str, ...] | None:
    """The SDK exemplar bucket's fields, in the order ``record`` stores them, or None.

    ``(value, time_unix_nano, attributes, span_id, trace_id, offered)``: found by offering a
    probe measurement to a bucket and matching each field with what was offered, so a
    bucket that stores anything else (another SDK release) is not written directly.
    """
    try:
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
            ExemplarBucket,
        )

        bucket = ExemplarBucket()
        context = trace.SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        attributes = {"probe": 1}
        span = trace.NonRecordingSpan(context)
        bucket.offer(0.25, 7, attributes, trace.set_span_in_context(span))
        fields = vars(bucket)
    except (ImportError, TypeError, AttributeError):  # pragma: no cover - another SDK shape
        return None
    wanted = (0.25, 7, attributes, 0xDEF, 0xABC, True)
    names = []
    for value in wanted:
        found = [name for name, held in fields.items() if held is value or held == value]
        if len(found) != 1 or type(fields[found[0]]) is not type(value):
            return None
        names.append(found[0])
    return tuple(names) if len(fields) == len(wanted) else None


_BUCKET_FIELDS = _bucket_fields()


def _same_buckets(reservoir: Any) -> bool:
    """True if ``bisect_left`` over the reservoir's boundaries is its own bucket search.

    Probed at, around and between every boundary, and beyond the last.
    """
    bounds = reservoir._boundaries
    probes = [b + d for b in bounds for d in (-1e-9, 0.0, 1e-9)] + [-1.0, 1e12]
    return all(
        bisect_left(bounds, v) == reservoir._find_bucket_index(v, 0, None, None) for v in probes
    )


def _direct_reservoir(aggregation: Any) -> Any:
    """The aggregation's exemplar reservoir if ``record`` may offer to it directly, else None.

    The SDK's exact explicit-bucket aggregation and aligned reservoir (its offer and bucket
    classes unpatched), over the same boundaries, with bucket fields as probed.
    """
    try:
        from opentelemetry.sdk.metrics._internal.aggregation import (
            _ExplicitBucketHistogramAggregation,
        )
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
            AlignedHistogramBucketExemplarReservoir,
            ExemplarBucket,
            FixedSizeExemplarReservoirABC,
        )
    except ImportError:  # pragma: no cover - another SDK shape
        return None
    reservoir = getattr(aggregation, "_reservoir", None)
    kind = AlignedHistogramBucketExemplarReservoir
    try:
        if (
            _BUCKET_FIELDS is None
            or type(aggregation) is not _ExplicitBucketHistogramAggregation
            or type(reservoir) is not kind
            or kind.offer is not FixedSizeExemplarReservoirABC.offer
            or getattr(reservoir._reservoir_storage, "default_factory", None) is not ExemplarBucket
            or tuple(reservoir._boundaries) != tuple(aggregation._boundaries)
            or not _same_buckets(reservoir)
        ):
            return None
    except (AttributeError, TypeError):  # pragma: no cover - another SDK shape
        return None
    return reservoir


def fast_histogram(histogram: metrics.Histogram) -> FastHistogram | None:
    """A :class:`FastHistogram` for an SDK histogram, None for any other implementation."""
    try:
        from opentelemetry.sdk.metrics import Histogram as SdkHistogram
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return None
    if not isinstance(histogram, SdkHistogram):
        return None
    consumer = getattr(histogram, "_measurement_consumer", None)
    config = getattr(consumer, "_sdk_config", None)
    if (
        not hasattr(consumer, "_reader_storages")
        or not hasattr(config, "exemplar_filter")
        or not callable(getattr(histogram, "_is_enabled", None))
    ):
        return None
    return FastHistogram(histogram)
