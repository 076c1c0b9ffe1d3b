"""The request span, started and ended without the SDK tracer's per-call plumbing when safe.

``Tracer.start_span`` plus ``Span.end`` cost ~15 us for the request span. Most of it is
plumbing around what ends up in the span: ``Span.__init__`` passes fourteen arguments
through ``ReadableSpan.__init__`` and re-cleans every attribute value (``BoundedAttributes``:
a type walk per value, under a lock); ``end()`` copies the span into a fresh
``ReadableSpan`` and walks the processor list twice (``_on_ending``, ``on_end``) to reach a
batch processor whose queue takes any span object.

:class:`DirectSpans` builds the *same* SDK ``_Span`` (same class, same fields, the same
sampler call, id generator, trace flags, limits, resource and scope) by filling a template
of its fields, and puts the values this package just built straight into its attribute
dict. When the provider's only processor is the SDK's ``BatchSpanProcessor`` over kiki's
fast exporter, :meth:`DirectSpans.end` encodes the ended span right away (an ended
``_Span`` is frozen: every mutator checks the end time) and hands the wire form to that
processor's queue, where its ``on_end`` would have put a copy of the span: one small
object waits in the queue instead of a span's ~10 (see ``_otlp_encode.Encoded``).

The SDK's per-span work is done inline where its result is fixed: the parent is read from
the context dict (what ``get_current_span`` does), a sampler whose decision for this kind of
parent is a constant (``ALWAYS_ON``/``ALWAYS_OFF``, alone or as a ``ParentBased`` delegate:
the default sampler without a parent) gives that decision without its call and
``SamplingResult``, and the ``SpanContext`` tuple is built as its ``__new__`` builds it
(layout probed once, in ``_context``). Any other sampler is called as before; one set on the
tracer after setup was never checked attribute-blind, so its spans start the SDK's way.

It is only used where nothing can tell the difference: an SDK tracer whose sampler ignores
attributes (the SDK's always_on/off, traceidratio and parentbased over those), whose span
processors are the SDK's batch/simple ones (their ``on_start`` does nothing, so no processor
sees the span before its attributes are in), no value length limit, room under the count
limit, and SDK internals with exactly the names read here (checked once per app; a release
that renames one turns the direct path off instead of breaking requests). It is re-checked
per request, so a processor added later, or a tracer disabled by the SDK's configurator,
sends spans the SDK way from then on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Span, sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from ._context import (
    SPAN_CONTEXT_TUPLE,
    SPAN_ID_MAX,
    SPAN_KEY,
    SPAN_READERS,
    TRACE_ID_MAX,
    span_reader,
    span_reader_of,
)
from ._native import new_instance, new_tuple, plain_fields, speedups
from ._otlp_encode import NATIVE_SDK_SPAN, encode_span
from ._otlp_http import FastSpanExporter, enqueue, has_queue, queue_item
from ._probe import same_code

__all__ = ["NO_ATTRIBUTES", "DirectSpans"]

_logger = logging.getLogger(__name__)

_SPAN_FIELDS = frozenset(
    {
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_instrumentation_info",
        "_instrumentation_scope",
        "_kind",
        "_limits",
        "_links",
        "_lock",
        "_name",
        "_parent",
        "_record_end_metrics",
        "_record_exception",
        "_resource",
        "_sampler",
        "_set_status_on_exception",
        "_span_processor",
        "_start_time",
        "_status",
        "_trace_config",
    }
)
"""Every field of an SDK ``_Span`` (opentelemetry-sdk 1.45): a template with other fields
means an SDK we have not checked, and the SDK path is used."""

_TRACE_ID_LOW = (1 << 64) - 1
"""What ``TraceIdRatioBased`` compares with its bound: the trace id's low 64 bits."""

_PER_SPAN = frozenset(
    {
        "_attributes",
        "_context",
        "_events",
        "_links",
        "_lock",
        "_name",
        "_parent",
        "_record_end_metrics",
        "_resource",
        "_sampler",
        "_start_time",
    }
)
"""The fields :meth:`DirectSpans.start` sets per span; the rest come from the template."""


class DirectSpans:
    """Start and end request spans of one SDK tracer as ``Tracer.start_span``/``end`` would."""

    __slots__ = (
        "_batch",
        "_drop",
        "_empty_attributes",
        "_empty_lists",
        "_fixed",
        "_flags",
        "_limits",
        "_list_fields",
        "_multi",
        "_new_attributes",
        "_new_list",
        "_no_metrics",
        "_processors",
        "_sample",
        "_sampler",
        "_span_class",
        "_template",
        "_tracer",
        "close",
        "open",
    )

    def __init__(
        self,
        tracer: Any,
        template: dict[str, Any],
        batch: Any,
        empty_attributes: dict[str, Any],
        list_fields: dict[str, Any],
    ) -> None:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import _Span
        from opentelemetry.sdk.trace.sampling import Decision
        from opentelemetry.sdk.util import BoundedList

        self._tracer = tracer
        self._sampler = tracer.sampler
        self._fixed = _fixed_decisions(tracer.sampler)
        self._drop = Decision.DROP
        self._sample = Decision.RECORD_AND_SAMPLE
        self._multi = tracer.span_processor
        self._processors = self._multi._span_processors
        self._limits = tracer._span_limits
        self._template = template
        self._batch = batch  # the lone batch processor's queue, or None: end() the SDK way
        self._span_class: Any = _Span
        self._new_attributes: Any = BoundedAttributes
        self._empty_attributes = empty_attributes
        self._new_list: Any = BoundedList
        # BoundedList(maxlen) for the span's events and links: its fields but the deque and
        # the lock, and an empty deque of each length to copy (no argument parser per span;
        # the limits are fixed once the provider is made, as _inspect's checks assume)
        self._list_fields = list_fields
        limits = self._limits
        self._empty_lists: tuple[deque[Any], deque[Any]] = (
            deque(maxlen=limits.max_events),
            deque(maxlen=limits.max_links),
        )
        self._no_metrics = _no_tracer_metrics()
        random_bit = TraceFlags.RANDOM_TRACE_ID
        # (sampled, random trace id) -> the flags start_span would build
        self._flags = {
            (sampled, rand): TraceFlags(
                (TraceFlags.SAMPLED if sampled else 0) | (random_bit * rand)
            )
            for sampled in (False, True)
            for rand in (False, True)
        }
        native_open = getattr(speedups, "span_open", None)
        # start_open's common case in C (its twin, and what it calls for the rest), when built
        self.open: Any = (
            native_open(
                self.start_open,
                tracer,
                self._sampler,
                tuple(self._fixed.get(kind) for kind in _PARENT_KINDS),
                self._drop,
                self._sample,
                tuple(
                    self._flags[sampled, rand]
                    for sampled in (False, True)
                    for rand in (False, True)
                ),
                _RANDOM_IDS,
                random,
                SPAN_KEY,
                SPAN_READERS,
                SpanContext,
                TraceFlags,
                DEFAULT_TRACE_STATE,
                *self._no_metrics,
                NonRecordingSpan,
                self._new_attributes,
                self._empty_attributes,
                self._new_list,
                self._list_fields,
                *self._empty_lists,
                self._span_class,
                self._template,
                threading,
                self._multi,
                self._processors,
                self._limits,
                plain_fields(
                    tracer, ("sampler", "id_generator", "_tracer_metrics", "_tracer_config")
                ),
                plain_fields(random, ("getrandbits",)),
                plain_fields(self._multi, ("_span_processors",)),
                plain_fields(self._limits, ("max_span_attributes",)),
                _NON_RECORDING_INIT,
            )
            if native_open is not None
            else self.start_open
        )
        native_close = getattr(speedups, "span_close", None)
        # finish's common case in C (its twin, and what it calls for the rest), when built
        self.close: Any = (
            native_close(
                self.finish,
                batch,
                self._span_class,
                self._multi,
                self._processors,
                self._no_metrics[1],
                NATIVE_SDK_SPAN,
                self._finish_sdk,
                self._export,
                enqueue,
            )
            if native_close is not None and batch is not None and NATIVE_SDK_SPAN is not None
            else self.finish
        )

    @classmethod
    def for_tracer(cls, tracer: trace.Tracer) -> DirectSpans | None:
        """The direct path for ``tracer``, or None: then every span takes the SDK's path."""
        try:
            return cls._inspect(tracer)
        except (AttributeError, TypeError, ImportError):  # SDK internals moved: stay on its path
            return None

    @classmethod
    def _inspect(cls, tracer: Any) -> DirectSpans | None:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, Tracer, _Span
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if (
            type(tracer) is not Tracer
            or not _attribute_blind(tracer.sampler)
            or _Span.__new__ not in (object.__new__, _SKIPPED_NEW)  # made without calling it
        ):
            return None
        multi = tracer.span_processor
        limits = tracer._span_limits
        if (
            type(multi) is not SynchronousMultiSpanProcessor
            or limits.max_span_attribute_length is not None
            or type(BoundedAttributes(attributes={})._dict) is not dict
        ):
            return None
        processors = multi._span_processors
        if not all(type(p) in (BatchSpanProcessor, SimpleSpanProcessor) for p in processors):
            return None
        # Read here so that a renamed one fails now (SDK path), not per request.
        tracer._tracer_metrics.start_span  # noqa: B018
        tracer._tracer_config.is_enabled  # noqa: B018
        TraceFlags.RANDOM_TRACE_ID  # noqa: B018
        trace.INVALID_SPAN_CONTEXT.trace_flags.random_trace_id  # noqa: B018
        template = vars(
            _Span(
                name="",
                context=trace.INVALID_SPAN_CONTEXT,
                sampler=tracer.sampler,
                resource=tracer.resource,
                span_processor=multi,
                kind=SpanKind.SERVER,
                instrumentation_info=tracer.instrumentation_info,
                limits=limits,
                instrumentation_scope=tracer._instrumentation_scope,
            )
        )
        empty_attributes = _empty_attributes(BoundedAttributes)
        list_fields = _empty_list_fields()
        if (
            set(template) != _SPAN_FIELDS
            or not SPAN_CONTEXT_TUPLE
            or not empty_attributes
            or list_fields is None
            or SPAN_KEY is None
        ):
            return None
        batch = None
        if (
            len(processors) == 1
            and type(processors[0]) is BatchSpanProcessor
            and isinstance(processors[0]._batch_processor._exporter, FastSpanExporter)
            and has_queue(processors[0]._batch_processor)
        ):
            batch = processors[0]._batch_processor
        shared = {k: v for k, v in template.items() if k not in _PER_SPAN}
        return cls(tracer, shared, batch, empty_attributes, list_fields)

    def usable(self, count: int) -> bool:
        """True while the span can be direct: same processors, tracer on, room for ``count``."""
        limit = self._limits.max_span_attributes
        return (
            self._multi._span_processors is self._processors
            and self._tracer._tracer_config.is_enabled
            and (limit is None or count <= limit)
        )

    def start(
        self, name: str, context: otel_context.Context, attributes: dict[str, Any]
    ) -> trace.Span:
        """``tracer.start_span(name, context, kind=SERVER, attributes=attributes)``.

        ``attributes`` must hold valid attribute values built by the caller, and
        :meth:`usable` must have been true for their count. The span keeps the dict
        itself as its attribute dict (no copy): the caller must not use it afterwards.
        """
        span: trace.Span | None = self.open(name, context, attributes)
        if span is None:
            sdk_span: trace.Span = self._tracer.start_span(
                name, context, kind=SpanKind.SERVER, attributes=attributes
            )
            return sdk_span
        return span

    def start_open(
        self, name: str, context: otel_context.Context, attributes: dict[str, Any]
    ) -> trace.Span | None:
        """:meth:`start`'s span, whose attribute dict is ``attributes`` itself, or None.

        The caller may go on adding attributes to the dict until it hands the span to
        anything else: nothing has seen the span yet (the sampler is attribute-blind, and
        the processors' ``on_start`` does nothing). So a caller builds the attributes a
        dropped span (a ``NonRecordingSpan``) would not keep only after it knows: at 10%
        sampling, nine requests in ten. :meth:`usable` must have been true for the count
        the dict will reach. None: the sampler was set on the tracer after setup, and the
        span must start the SDK's way, with all its attributes (never found
        attribute-blind, that sampler may read them).
        """
        tracer = self._tracer
        sampler = tracer.sampler
        if sampler is not self._sampler:
            return None
        # trace.get_current_span(context).get_span_context(), without its two calls
        # (SPAN_KEY is not None: _inspect checked)
        current = context.get(SPAN_KEY) if context is not None else trace.get_current_span()  # type: ignore[arg-type]
        parent: SpanContext | None = None
        if current is not None:  # (None: no span in the context, a new trace)
            read = span_reader_of(type(current)) or span_reader(current)  # isinstance(.., Span)
            if read is not None:
                parent = read(current)
        generator = tracer.id_generator
        random_ids = type(generator) is _RANDOM_IDS  # its methods' code inline, as it is
        if parent is None or not parent.is_valid:
            parent = None
            if random_ids:
                trace_id = random.getrandbits(128)
                while trace_id == trace.INVALID_TRACE_ID:
                    trace_id = random.getrandbits(128)
                random_id = True
            else:
                trace_id = generator.generate_trace_id()
                random_id = generator.is_trace_id_random()
            kind = None
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
            kind = (parent.is_remote, parent.trace_flags.sampled)
        decision = self._fixed.get(kind)
        if type(decision) is int:  # TraceIdRatioBased.should_sample, inline
            decision = self._sample if trace_id & _TRACE_ID_LOW < decision else self._drop
        if decision is None:
            # Attribute-blind samplers (checked): the attributes go in below, as in _inspect.
            result = sampler.should_sample(context, trace_id, name, SpanKind.SERVER, None, ())
            decision, trace_state = result.decision, result.trace_state
            sampled_attributes: Any = result.attributes
        else:  # what that sampler returns: its decision, the parent's trace state
            trace_state = None if parent is None else parent.trace_state
            sampled_attributes = None
        if random_ids:
            span_id = random.getrandbits(64)
            while span_id == trace.INVALID_SPAN_ID:
                span_id = random.getrandbits(64)
        else:
            span_id = generator.generate_span_id()
        # SpanContext(trace_id, span_id, is_remote=False, trace_flags=..., trace_state=...)
        span_context = new_tuple(
            SpanContext,
            trace_id,
            span_id,
            False,
            self._flags[decision is self._sample, bool(random_id)],
            DEFAULT_TRACE_STATE if trace_state is None else trace_state,
            INVALID_TRACE_ID < trace_id <= TRACE_ID_MAX
            and INVALID_SPAN_ID < span_id <= SPAN_ID_MAX,
        )
        tracer_metrics = tracer._tracer_metrics
        if type(tracer_metrics) is self._no_metrics[0]:  # off (the default): what it returns
            record_end_metrics = self._no_metrics[1]
        else:
            record_end_metrics = tracer_metrics.start_span(parent, decision)
        if decision is self._drop:  # not Decision.is_recording()
            return NonRecordingSpan(span_context)
        return self._recording(
            name, parent, span_context, sampler, sampled_attributes, attributes, record_end_metrics
        )

    def _recording(
        self,
        name: str,
        parent: SpanContext | None,
        span_context: SpanContext,
        sampler: Any,
        sampled_attributes: Any,
        attributes: dict[str, Any],
        record_end_metrics: Any,
    ) -> trace.Span:
        """:meth:`start_open`'s recording span, its ids and sampling decided.

        ``sampled_attributes``: the sampler's own (None for the decisions taken inline).
        """
        limits = self._limits
        if sampled_attributes:  # a sampler's own attributes first, cleaned by the SDK
            bounded = self._new_attributes(
                limits.max_span_attributes,
                sampled_attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
            ours = attributes.copy()
            attributes.clear()
            attributes.update(bounded._dict)
            attributes.update(ours)
            bounded._dict = attributes  # still the caller's dict, which it may fill
        else:  # BoundedAttributes(max, None, immutable=False, max_value_len=None), filled
            bounded = new_instance(
                self._new_attributes,
                self._empty_attributes,
                _dict=attributes,
                maxlen=limits.max_span_attributes,
                _lock=threading.Lock(),
            )
        events, links = self._empty_lists
        span = new_instance(
            self._span_class,
            self._template,
            _name=name,
            _context=span_context,
            _parent=parent,
            _resource=self._tracer.resource,
            _sampler=sampler,
            _attributes=bounded,
            _events=new_instance(
                self._new_list, self._list_fields, _dq=events.copy(), _lock=threading.Lock()
            ),
            _links=new_instance(
                self._new_list, self._list_fields, _dq=links.copy(), _lock=threading.Lock()
            ),
            _lock=threading.Lock(),
            _record_end_metrics=record_end_metrics,
            _start_time=time.time_ns(),
        )
        # on_start of the SDK's batch/simple processors does nothing: not called.
        return cast(trace.Span, span)

    def set_attributes(
        self, span: Any, attributes: Mapping[str, Any], name: str | None = None
    ) -> None:
        """``span.update_name(name)`` unless ``name`` is None, then ``span.set_attributes``.

        For values built by the caller. Both under one hold of the span's lock, where the
        SDK takes it twice (and ``update_name`` through its ended-span decorator).
        """
        bounded = getattr(span, "_attributes", None)
        values = getattr(bounded, "_dict", None)
        # Only the span's count limit matters here (none may be evicted): the SDK's own
        # set_attributes consults neither the processors nor the tracer's config.
        if (
            type(span) is self._span_class
            and type(values) is dict
            and (bounded.maxlen is None or len(values) + len(attributes) <= bounded.maxlen)  # type: ignore[union-attr]
        ):
            with span._lock:
                if span._end_time is None:
                    if name is not None:
                        span._name = name
                    for key, value in attributes.items():
                        values.pop(key, None)  # a key set again moves to the end, as in the SDK
                        values[key] = value
                    return
        if name is not None:  # ended, or not a span of ours: the SDK's calls and warnings
            span.update_name(name)
        span.set_attributes(attributes)

    def end(self, span: Any, end_time: int | None = None) -> None:
        """``span.end(end_time)``, encoded straight into the queue if that is the only consumer."""
        self.close(span, NO_ATTRIBUTES, None, end_time)

    def finish(
        self,
        span: Any,
        attributes: Mapping[str, Any],
        name: str | None = None,
        end_time: int | None = None,
    ) -> None:
        """:meth:`set_attributes` then :meth:`end`, under one hold of the span's lock.

        The request span's last values (route, status, the name with the route) go in as
        it ends: one call, one lock, one set of checks, where the two calls took two.
        """
        batch = self._batch
        bounded = getattr(span, "_attributes", None)
        values = getattr(bounded, "_dict", None)
        if (
            batch is None
            or type(span) is not self._span_class
            or self._multi._span_processors is not self._processors
            or type(values) is not dict
            or (bounded.maxlen is not None and len(values) + len(attributes) > bounded.maxlen)  # type: ignore[union-attr]
        ):
            self._finish_sdk(span, attributes, name, end_time)
            return
        with span._lock:
            if span._start_time is None or span._end_time is not None:
                ended = True
            else:
                ended = False
                if name is not None:
                    span._name = name
                for key, value in attributes.items():
                    values.pop(key, None)  # a key set again moves to the end, as in the SDK
                    values[key] = value
                span._end_time = end_time if end_time is not None else time.time_ns()
                bounded._immutable = True  # type: ignore[union-attr]
        if ended:  # the SDK's own errors or warnings
            self._finish_sdk(span, attributes, name, end_time)
            return
        record_end_metrics = span._record_end_metrics
        if record_end_metrics and record_end_metrics is not self._no_metrics[1]:
            record_end_metrics()
        self._export(span)

    def _export(self, span: Any) -> None:
        """Queue the ended span if it is sampled, encoded (itself, if our encoder fails)."""
        if span._context[3] & _SAMPLED:  # trace_flags.sampled (SPAN_CONTEXT_TUPLE: checked)
            try:
                item: Any = encode_span(span)
            except Exception:  # a bug in our encoder must not cost the span: export it later
                _logger.exception("kiki_otel: could not encode span %s", span.name)
                item = span
            if not queue_item(self._batch, item):
                enqueue(self._batch, item)

    def _finish_sdk(
        self, span: Any, attributes: Mapping[str, Any], name: str | None, end_time: int | None
    ) -> None:
        """:meth:`finish` through the span's own methods (their checks, warnings, processors)."""
        if attributes or name is not None:
            self.set_attributes(span, attributes, name)
        span.end(end_time)


NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})
"""No attributes to add (:meth:`DirectSpans.end`, a request span without route or status)."""
_SAMPLED = TraceFlags.SAMPLED


class _SdkSpanNew:
    """The SDK's ``Span.__new__`` (1.45), which :meth:`DirectSpans.start` does not call.

    For any class but ``Span`` itself it is ``object.__new__(cls)``, which the span is made
    with. Used only while the SDK's compiles to this code (``_probe.same_code``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Span:
            raise TypeError("Span must be instantiated via a tracer.")
        return super().__new__(cls)


_SKIPPED_NEW = Span.__new__ if same_code(Span.__new__, _SdkSpanNew.__new__) else None


# NonRecordingSpan.__init__ as the C open makes a dropped span without calling it
# (``object.__new__``, then ``_context`` set). Held only while the API's compiles to this
# code, constants included (``_probe.same_code``: no docstring here).
def _non_recording_init(self: Any, context: Any) -> None:
    self._context = context


_NON_RECORDING_INIT = (
    NonRecordingSpan.__init__
    if same_code(NonRecordingSpan.__init__, _non_recording_init)
    and NonRecordingSpan.__new__ is object.__new__
    else None
)


class _SdkRandomIds:
    """The SDK's ``RandomIdGenerator`` methods (1.45), run inline by ``start_open``.

    Three frames a span. Used only while the SDK's compile to this code.
    """

    def generate_span_id(self) -> int:
        span_id = random.getrandbits(64)
        while span_id == trace.INVALID_SPAN_ID:
            span_id = random.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = random.getrandbits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = random.getrandbits(128)
        return trace_id

    def is_trace_id_random(self) -> bool:
        return True


_RANDOM_IDS: type | None = (
    RandomIdGenerator
    if all(
        same_code(getattr(RandomIdGenerator, name), getattr(_SdkRandomIds, name))
        for name in ("generate_span_id", "generate_trace_id", "is_trace_id_random")
    )
    else None
)
"""The SDK's id generator, while its methods are :class:`_SdkRandomIds`' code."""


def _no_tracer_metrics() -> tuple[type | None, Any]:
    """The SDK's tracer metrics when off, and the end callback its ``start_span`` returns.

    ``(None, None)`` if that class is not where it was, or returns something else: then
    ``start_span`` is called for every span, whatever the tracer's metrics.
    """
    try:
        from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
        from opentelemetry.sdk.trace.sampling import Decision

        end = NoOpTracerMetrics().start_span(None, Decision.RECORD_AND_SAMPLE)
        if end is not NoOpTracerMetrics().start_span(None, Decision.DROP) or not callable(end):
            return None, None
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - another SDK shape
        return None, None
    return NoOpTracerMetrics, end


def _attribute_blind(sampler: Any) -> bool:
    """True for the SDK samplers whose decision and result ignore span attributes."""
    kind = type(sampler)
    if kind in (sampling.StaticSampler, sampling.TraceIdRatioBased):
        return True
    if kind is sampling.ParentBased:
        return all(
            _attribute_blind(getattr(sampler, name, None))
            for name in (
                "_root",
                "_remote_parent_sampled",
                "_remote_parent_not_sampled",
                "_local_parent_sampled",
                "_local_parent_not_sampled",
            )
        )
    return False


_PARENT_KINDS: tuple[tuple[bool, bool] | None, ...] = (
    None,
    (True, True),
    (True, False),
    (False, True),
    (False, False),
)
"""No valid parent, or ``(is_remote, sampled)`` of the parent: what ``ParentBased`` tells apart."""


_SHOULD_SAMPLE: dict[type, Any] = {
    sampling.StaticSampler: sampling.StaticSampler.should_sample,
    sampling.TraceIdRatioBased: sampling.TraceIdRatioBased.should_sample,
    sampling.ParentBased: sampling.ParentBased.should_sample,
}
"""The SDK's own ``should_sample`` of the samplers decided inline, as imported: a sampler
class patched since (a test double, an instrumentation) is called instead."""


def _sdk_sampler(sampler: Any) -> type | None:
    kind = type(sampler)
    return kind if _SHOULD_SAMPLE.get(kind) is getattr(kind, "should_sample", None) else None


def _fixed_decisions(sampler: Any) -> dict[tuple[bool, bool] | None, Any]:
    """The decisions ``sampler`` takes without looking at the span, by kind of parent.

    Keys: None (no valid parent) or ``(parent.is_remote, parent.trace_flags.sampled)``.
    Values: the ``Decision`` of the ``StaticSampler`` that decides for that parent (itself,
    or the ``ParentBased`` delegate it picks), or the ``bound`` of the ``TraceIdRatioBased``
    that does, which samples a trace id whose low 64 bits are below it. Either one's result
    is that decision and the parent's trace state, nothing else. Kinds decided by another
    sampler are left out: that sampler is called.
    """
    kind = _sdk_sampler(sampler)
    if kind is sampling.StaticSampler or kind is sampling.TraceIdRatioBased:
        return dict.fromkeys(_PARENT_KINDS, _fixed_decision(sampler))
    if kind is not sampling.ParentBased:
        return {}
    delegates = (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_sampled,
        sampler._local_parent_not_sampled,
    )
    fixed = {key: _fixed_decision(d) for key, d in zip(_PARENT_KINDS, delegates, strict=True)}
    return {key: decision for key, decision in fixed.items() if decision is not None}


def _fixed_decision(sampler: Any) -> Any:
    """A static sampler's ``Decision``, a ratio sampler's ``bound`` (an int), or None."""
    kind = _sdk_sampler(sampler)
    if kind is sampling.StaticSampler:
        return sampler._decision
    if kind is sampling.TraceIdRatioBased and type(sampler.bound) is int:
        return sampler.bound
    return None


_ATTRIBUTE_FIELDS = frozenset(
    {"_dict", "_immutable", "_lock", "dropped", "max_value_len", "maxlen"}
)
"""Every field of an SDK ``BoundedAttributes`` (opentelemetry-api 1.45)."""


def _empty_attributes(kind: Any) -> dict[str, Any] | None:
    """An empty, mutable ``BoundedAttributes`` without a value length limit, as fields.

    All but the three :meth:`DirectSpans.start` sets per span; None for another layout.
    """
    if kind.__new__ is not object.__new__:
        return None
    fields = vars(kind(None, None, immutable=False, max_value_len=None))
    if set(fields) != _ATTRIBUTE_FIELDS or type(fields["_dict"]) is not dict:
        return None
    return {k: v for k, v in fields.items() if k not in ("_dict", "maxlen", "_lock")}


_LIST_FIELDS = frozenset({"dropped", "_dq", "_lock"})
"""Every field of an SDK ``BoundedList`` (opentelemetry-sdk 1.45)."""


def _empty_list_fields() -> dict[str, Any] | None:
    """An empty ``BoundedList``'s fields but its deque and its lock; None for another layout."""
    from opentelemetry.sdk.util import BoundedList

    if BoundedList.__new__ is not object.__new__:
        return None
    fields = vars(BoundedList(1))
    if set(fields) != _LIST_FIELDS or type(fields["_dq"]) is not deque:
        return None
    return {k: v for k, v in fields.items() if k not in ("_dq", "_lock")}
