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
from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import INVALID_SPAN, TraceFlags

from ._context import (
    CURRENT,
    IDS_BY_NAME,
    SPAN_KEY,
    current_get,
    ids_of,
    span_reader,
    span_reader_of,
)
from ._native import new_tuple, plain_fields, speedups
from ._probe import same_code

__all__ = ["FastHistogram", "fast_histogram"]

_SAMPLED = TraceFlags.SAMPLED


class _Measurement(NamedTuple):
    """Duck-typed ``opentelemetry.sdk.metrics`` ``Measurement``: what aggregations read.

    A named tuple made with ``_native.new_tuple``: no Python frame to make one, and its
    fields read in C.
    """

    value: float
    time_unix_nano: int
    instrument: Any
    context: Any
    attributes: Any


class FastHistogram:
    """``record(value, attributes)`` for one histogram, direct to its aggregations when safe."""

    def __init__(self, histogram: metrics.Histogram) -> None:
        from opentelemetry.sdk.metrics import TraceBasedExemplarFilter

        # (with no span key known, every filter is called)
        self._trace_based: Any = TraceBasedExemplarFilter if SPAN_KEY is not None else None
        self._histogram = histogram
        self._consumer: Any = getattr(histogram, "_measurement_consumer", None)
        self._storages: Any = None
        # attribute items -> (aggregation, reservoir offered directly or None, the C
        # aggregate for it or None) of every reader for that attribute set
        self._cache: dict[tuple[tuple[str, Any], ...], list[tuple[Any, Any, Any]]] = {}
        native = getattr(speedups, "histogram_record", None)
        self.call: Callable[[float, dict[str, Any], tuple[Any, ...]], None] = (
            native(self, CURRENT, _BUCKET_FIELDS, self._held())
            if native is not None and CURRENT is not None and _BUCKET_FIELDS is not None
            else self.record
        )
        """``record(value, attributes, current)``: in C for its common case
        (``_speedups.histogram_record``, whose twin and fallback is :meth:`record`)."""

    def _held(self) -> tuple[Any, ...]:
        """What the C record reads attributes through (``_native.plain_fields``).

        This object's ``__dict__``, then each SDK object it reads, with its own or None.
        """
        consumer = self._consumer
        sdk_config = getattr(consumer, "_sdk_config", None)
        config = getattr(self._histogram, "_meter_config", None)
        enabled = vars(type(config)).get("is_enabled")
        if not (isinstance(enabled, property) and same_code(enabled.fget, _proxy_is_enabled)):
            config = None  # (its is_enabled read as it is)
        held: list[Any] = [vars(self)]
        for owner, names in (
            (self._histogram, ("_meter_config",)),
            (consumer, ("_reader_storages", "_sdk_config")),
            (sdk_config, ("exemplar_filter",)),
            (config, ("_config",)),
        ):
            held += [owner, plain_fields(owner, names)]
        return tuple(held)

    def record(
        self,
        value: float,
        attributes: dict[str, Any],
        current: tuple[Any, ...] | None = None,
    ) -> None:
        """Record ``value`` (finite, >= 0: a duration) with ``attributes`` (str/int values).

        ``current``, if given: a context the caller made current, and the trace id, span
        id and trace flags of the span it holds, a span that is not ``INVALID_SPAN`` (more
        items may follow: the middleware's tuple carries what its access line reads). While
        that context is still the current one, the exemplar filter's answer is read from
        those instead of from the span (the request's middleware knows them: it made both).
        """
        consumer = self._consumer
        if consumer is None:
            self._histogram.record(value, attributes)
            return
        key = tuple(attributes.items())
        aggregations = self._cache.get(key)
        config = self._histogram._meter_config  # type: ignore[attr-defined]
        if (
            aggregations is None
            or not _plain(attributes)
            or consumer._reader_storages is not self._storages
            or not (config is None or config.is_enabled)  # the SDK's _is_enabled(), inline
        ):
            self._histogram.record(value, attributes)
            self._learn(key, attributes)
            return
        now = time.time_ns()
        ctx = current_get() if CURRENT is not None else otel_context.get_current()
        exemplar_filter = consumer._sdk_config.exemplar_filter
        # what a bucket's offer() stores, when the exemplar goes in directly
        offered: tuple[float, int, dict[str, Any], int, int, bool] | None = None
        if type(exemplar_filter) is not self._trace_based:
            sample = exemplar_filter.should_sample(value, now, attributes, ctx)
        elif current is not None and current[0] is ctx:  # the caller's span: its ids
            sample = bool(current[3] & _SAMPLED)
            if sample:
                offered = (value, now, attributes, current[2], current[1], True)
        else:  # its should_sample, inline:
            # trace.get_current_span(ctx); SPAN_KEY is not None here (see __init__)
            span = ctx.get(SPAN_KEY)  # type: ignore[arg-type]
            read = span_reader_of(type(span)) or span_reader(span)  # isinstance(span, Span)
            if read is None or span == INVALID_SPAN:
                sample = False
            else:  # span.get_span_context().trace_flags.sampled, the fields read in C
                context = read(span)
                trace_id, span_id, flags, _valid = ids_of(type(context), IDS_BY_NAME)(context)
                sample = bool(flags & _SAMPLED)
                if sample:
                    offered = (value, now, attributes, span_id, trace_id, True)
        self._aggregate_each(aggregations, 0, value, now, ctx, attributes, sample, offered)

    def _aggregate_each(
        self,
        aggregations: list[tuple[Any, Any, Any]],
        start: int,
        value: float,
        now: int,
        ctx: otel_context.Context,
        attributes: dict[str, Any],
        sample: bool,
        offered: tuple[float, int, dict[str, Any], int, int, bool] | None,
    ) -> None:
        """The measurement into each aggregation from ``start`` on (the C record's rest)."""
        measurement = None
        for aggregation, reservoir, native in aggregations[start:] if start else aggregations:
            if native is not None:  # in C: the counts, and the exemplar when it goes in directly
                if offered is None:
                    if not sample and native(aggregation, value, None, None, None):
                        continue
                elif reservoir is not None and native(
                    aggregation, value, reservoir, _BUCKET_FIELDS, offered
                ):
                    continue
            if measurement is None:
                histogram = self._histogram
                measurement = new_tuple(_Measurement, value, now, histogram, ctx, attributes)
            if offered is None or reservoir is None:
                aggregation.aggregate(measurement, sample)
                continue
            aggregation.aggregate(measurement, False)  # counts; the exemplar below
            with reservoir._lock:  # what its offer() stores, where it stores it
                bucket = reservoir._reservoir_storage[bisect_left(reservoir._boundaries, value)]
                bucket.__dict__.update(zip(_BUCKET_FIELDS, offered, strict=True))  # type: ignore[arg-type]

    def _learn(self, key: tuple[tuple[str, Any], ...], attributes: dict[str, Any]) -> None:
        """Find the SDK aggregations that just took ``attributes``; cache them if it is safe."""
        if not _plain(attributes):
            return
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
    ) -> tuple[Any, list[tuple[Any, Any, Any]]] | None:
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
                aggregations.append(
                    (aggregation, _direct_reservoir(aggregation), _native_aggregate(aggregation))
                )
        return storages, aggregations


# The SDK's ``_ProxyMeterConfig.is_enabled`` property (1.45): while the SDK's compiles to
# this, the C record reads its ``_config``'s ``is_enabled`` itself, without the property's
# Python frame. No docstring: compared constants included (``_probe.same_code``).
def _proxy_is_enabled(self: Any) -> bool:
    return self._config.is_enabled  # type: ignore[no-any-return]


_PLAIN_VALUES = frozenset((str, int))
_NAMES = frozenset((str,))


def _plain(attributes: dict[str, Any]) -> bool:
    """Whether the cache keeps ``attributes``' set: str names, values exactly str or int.

    Its key, ``tuple(attributes.items())``, holds values by equality, where the SDK keeps
    ``True``, ``1`` and ``1.0`` apart (``_hash_attributes``: type and value): a set with a
    bool or float value would find another set's aggregations. Such sets (never the
    request histogram's) take ``Histogram.record`` each time.
    """
    return (
        set(map(type, attributes)) <= _NAMES
        and set(map(type, attributes.values())) <= _PLAIN_VALUES
    )


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


def _probe_native() -> tuple[Any, Any]:
    """The C aggregate and the SDK ``aggregate`` it was checked against, or ``(None, None)``.

    Twin SDK explicit-bucket aggregations, each with its aligned exemplar reservoir, take
    the same measurements: one through the SDK's own ``aggregate`` (sampling the exemplar:
    the reservoir's ``offer`` reads the span from the context), the other through
    ``_speedups.histogram_aggregate``; afterwards every field of both, and of their
    reservoirs' buckets, must be equal, of the same types. An SDK release that keeps its
    state otherwise turns the C path off, not the answers wrong.
    """
    native = getattr(speedups, "histogram_aggregate", None)
    if native is None or _BUCKET_FIELDS is None:
        return None, None
    try:
        from opentelemetry.sdk.metrics._internal.aggregation import (
            AggregationTemporality,
            _ExplicitBucketHistogramAggregation,
        )
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
            AlignedHistogramBucketExemplarReservoir,
        )

        sdk_aggregate: Any = _ExplicitBucketHistogramAggregation.aggregate
        bounds = [0.005, 0.5, 1.0, 2.5]  # a list, as a view's advisory boundaries come

        def twin() -> Any:
            reservoir: Any = AlignedHistogramBucketExemplarReservoir
            return _ExplicitBucketHistogramAggregation(
                {"probe": 1}, AggregationTemporality.CUMULATIVE, 0, reservoir, boundaries=bounds
            )

        sdk, ours = twin(), twin()
        context = trace.SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(context))
        for time_ns, value in enumerate((0.7, 3.0, 0.0, 1.0, 0.7, 0.004, 2.5)):
            attributes = {"probe": time_ns}
            sdk_aggregate(sdk, new_tuple(_Measurement, value, time_ns, None, ctx, attributes))
            offered = (value, time_ns, attributes, 0xDEF, 0xABC, True)
            if native(ours, value, ours._reservoir, _BUCKET_FIELDS, offered) is not True:
                return None, None
        if native(ours, 1, None, None, None) is not False:  # not a float: handed back
            return None, None
        theirs, mine = sdk._reservoir, ours._reservoir
        if not (
            _same_fields(sdk, ours, skip={"_lock", "_reservoir"})
            and _same_fields(theirs, mine, skip={"_lock", "_reservoir_storage"})
            and theirs._reservoir_storage.keys() == mine._reservoir_storage.keys()
            and all(
                _same_fields(bucket, mine._reservoir_storage[index], skip=set())
                for index, bucket in theirs._reservoir_storage.items()
            )
        ):
            return None, None
    except (ImportError, TypeError, AttributeError, ValueError):  # another SDK shape
        return None, None
    return native, sdk_aggregate


def _same_fields(expected: object, got: object, skip: set[str]) -> bool:
    mine, theirs = vars(expected), vars(got)
    return mine.keys() == theirs.keys() and all(
        type(value) is type(theirs[name]) and value == theirs[name]
        for name, value in mine.items()
        if name not in skip
    )


_NATIVE, _SDK_AGGREGATE = _probe_native()


def _native_aggregate(aggregation: Any) -> Any:
    """``_speedups.histogram_aggregate`` when it may aggregate into ``aggregation``, else None.

    Only for the SDK's exact explicit-bucket aggregation with the ``aggregate`` it was
    probed against (:func:`_probe_native`): not a subclass, not a patched method.
    """
    if _NATIVE is None:
        return None
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _ExplicitBucketHistogramAggregation,
    )

    kind = type(aggregation)
    if kind is not _ExplicitBucketHistogramAggregation or kind.aggregate is not _SDK_AGGREGATE:
        return None
    return _NATIVE


# What ``record`` runs inline of the SDK's ``_Synchronous._is_enabled`` (1.45). No docstring:
# its code is compared with the SDK's, constants included (``_probe.same_code``).
def _is_enabled_as_inlined(self: Any) -> bool:
    return self._meter_config is None or self._meter_config.is_enabled


def _sdk_is_enabled() -> Any:
    """The SDK's ``_Synchronous._is_enabled`` if it is :func:`_is_enabled_as_inlined`, or None."""
    try:
        from opentelemetry.sdk.metrics._internal.instrument import _Synchronous
    except ImportError:  # pragma: no cover - another SDK shape
        return None
    sdk = getattr(_Synchronous, "_is_enabled", None)
    return sdk if same_code(sdk, _is_enabled_as_inlined) else None


_SDK_IS_ENABLED = _sdk_is_enabled()


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
        or _SDK_IS_ENABLED is None
        or getattr(type(histogram), "_is_enabled", None) is not _SDK_IS_ENABLED
        or not hasattr(histogram, "_meter_config")
    ):
        return None
    return FastHistogram(histogram)
