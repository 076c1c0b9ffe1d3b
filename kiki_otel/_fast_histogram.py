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
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.trace import INVALID_SPAN, Span, TraceFlags

from ._context import CURRENT, IDS, IDS_BY_NAME, SPAN_KEY

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
        # attribute items -> the SDK aggregations of every reader for that attribute set
        self._cache: dict[tuple[tuple[str, Any], ...], list[Any]] = {}

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
        if type(exemplar_filter) is self._trace_based:  # its should_sample, inline:
            # trace.get_current_span(ctx); SPAN_KEY is not None here (see __init__)
            span = ctx.get(SPAN_KEY)  # type: ignore[arg-type]
            if not isinstance(span, Span) or span == INVALID_SPAN:
                sample = False
            else:  # span.get_span_context().trace_flags.sampled, the fields read in C
                context = span.get_span_context()
                sample = bool(IDS.get(type(context), IDS_BY_NAME)(context)[2] & _SAMPLED)
        else:
            sample = exemplar_filter.should_sample(value, now, attributes, ctx)
        measurement = _new_tuple(_Measurement, (value, now, self._histogram, ctx, attributes))
        for aggregation in aggregations:
            aggregation.aggregate(measurement, sample)

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

    def _aggregations_for(self, attributes: dict[str, Any]) -> tuple[Any, list[Any]] | None:
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
                aggregations.append(aggregation)
        return storages, aggregations


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
