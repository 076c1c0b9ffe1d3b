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
import threading
import time
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from ._otlp_encode import encode_span
from ._otlp_http import FastSpanExporter, enqueue, has_queue

__all__ = ["DirectSpans"]

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
        "_flags",
        "_limits",
        "_multi",
        "_new_attributes",
        "_new_list",
        "_processors",
        "_span_class",
        "_template",
        "_tracer",
    )

    def __init__(self, tracer: Any, template: dict[str, Any], batch: Any) -> None:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import _Span
        from opentelemetry.sdk.util import BoundedList

        self._tracer = tracer
        self._multi = tracer.span_processor
        self._processors = self._multi._span_processors
        self._limits = tracer._span_limits
        self._template = template
        self._batch = batch  # the lone batch processor's queue, or None: end() the SDK way
        self._span_class: Any = _Span
        self._new_attributes: Any = BoundedAttributes
        self._new_list: Any = BoundedList
        random = TraceFlags.RANDOM_TRACE_ID
        # (sampled, random trace id) -> the flags start_span would build
        self._flags = {
            (sampled, rand): TraceFlags((TraceFlags.SAMPLED if sampled else 0) | (random * rand))
            for sampled in (False, True)
            for rand in (False, True)
        }

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

        if type(tracer) is not Tracer or not _attribute_blind(tracer.sampler):
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
        if set(template) != _SPAN_FIELDS:
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
        return cls(tracer, shared, batch)

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
        :meth:`usable` must have been true for their count.
        """
        tracer = self._tracer
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = tracer.id_generator.generate_trace_id()
            random_id = tracer.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        sampler = tracer.sampler
        # Attribute-blind samplers (checked): the attributes go in below, as in _inspect.
        result = sampler.should_sample(context, trace_id, name, SpanKind.SERVER, None, ())
        decision = result.decision
        span_context = SpanContext(
            trace_id,
            tracer.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=self._flags[decision.is_sampled(), bool(random_id)],
            trace_state=result.trace_state,
        )
        record_end_metrics = tracer._tracer_metrics.start_span(parent, decision)
        if not decision.is_recording():
            return NonRecordingSpan(span_context)
        limits = self._limits
        bounded = self._new_attributes(
            limits.max_span_attributes,
            result.attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )
        bounded._dict.update(attributes)
        span = self._span_class.__new__(self._span_class)
        fields = span.__dict__
        fields.update(self._template)
        fields["_name"] = name
        fields["_context"] = span_context
        fields["_parent"] = parent
        fields["_resource"] = tracer.resource
        fields["_sampler"] = sampler
        fields["_attributes"] = bounded
        fields["_events"] = self._new_list(limits.max_events)
        fields["_links"] = self._new_list(limits.max_links)
        fields["_lock"] = threading.Lock()
        fields["_record_end_metrics"] = record_end_metrics
        fields["_start_time"] = time.time_ns()
        # on_start of the SDK's batch/simple processors does nothing: not called.
        return cast(trace.Span, span)

    def set_attributes(self, span: Any, attributes: dict[str, Any]) -> None:
        """``span.set_attributes(attributes)`` for values built by the caller."""
        values = getattr(getattr(span, "_attributes", None), "_dict", None)
        if (
            type(values) is dict
            and span.is_recording()
            and self.usable(len(values) + len(attributes))
        ):
            for key, value in attributes.items():
                values.pop(key, None)  # a key set again moves to the end, as in the SDK
                values[key] = value
            return
        span.set_attributes(attributes)

    def end(self, span: Any, end_time: int | None = None) -> None:
        """``span.end(end_time)``, encoded straight into the queue if that is the only consumer."""
        batch = self._batch
        if (
            batch is None
            or type(span) is not self._span_class
            or self._multi._span_processors is not self._processors
        ):
            span.end(end_time)
            return
        with span._lock:
            if span._start_time is None or span._end_time is not None:
                ended = True
            else:
                ended = False
                span._end_time = end_time if end_time is not None else time.time_ns()
                span._attributes._immutable = True
        if ended:
            span.end(end_time)  # the SDK's own error or warning
            return
        if span._record_end_metrics:
            span._record_end_metrics()
        if span._context.trace_flags.sampled:
            try:
                item: Any = encode_span(span)
            except Exception:  # a bug in our encoder must not cost the span: export it later
                _logger.exception("kiki_otel: could not encode span %s", span.name)
                item = span
            enqueue(batch, item)


def _attribute_blind(sampler: Any) -> bool:
    """True for the SDK samplers whose decision and result ignore span attributes."""
    from opentelemetry.sdk.trace import sampling

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
