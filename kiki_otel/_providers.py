"""One builder per signal: provider, exporter, processor; then set it globally (or join).

OpenTelemetry lets a global provider be set once per process. If something else (another
distro, ``opentelemetry-instrument``, the app itself) set an SDK provider first, we *join*
it: use it as is and say so, rather than replacing it or adding a second exporter to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from ._exporters import log_exporter, metric_exporter, span_exporter
from ._settings import Settings

__all__ = ["DURATION_BUCKETS", "Providers", "build_providers"]

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Seconds buckets for request/check durations: the HTTP semconv's advice plus 0.2 s, the
latency SLO's threshold (p95 < 200 ms), so that SLO is counted exactly, not interpolated."""

_DURATION_INSTRUMENTS = (
    "http.server.request.duration",
    "http.client.request.duration",
    "kiki.health.check.duration",
)


@dataclass
class Providers:
    """What the pipeline built. ``owned`` ones are ours to flush and shut down."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    owned: list[Any] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)


def build_sampler(settings: Settings) -> Sampler:
    """The sampler named by OTEL_TRACES_SAMPLER/_ARG (default: parent-based, always on)."""
    ratio = 1.0 if settings.traces_sampler_arg is None else settings.traces_sampler_arg
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
    }.get(settings.traces_sampler.removeprefix("parentbased_"), ALWAYS_ON)
    if settings.traces_sampler.startswith("parentbased_"):
        return ParentBased(root)
    return root


E = TypeVar("E")


def _console_or_otlp(
    settings: Settings, choice: str, console: Callable[[], E], otlp: Callable[[Settings], E]
) -> E | None:
    if choice == "none":
        return None
    return console() if choice == "console" else otlp(settings)


EXPORT_BATCH = 64
"""Export batch size for the official exporters (the SDK's default is 512). They encode on
the export thread, holding the GIL ~50 us a span, on the core(s) the requests run on: 512
at once is a ~25 ms burst every request in flight waits behind (the p99 tail). Smaller,
more frequent batches spread it: through uvicorn, p99 49-54 -> 24-32 ms at the same CPU per
request (docs/performance-log.md, cut 7 and the fourth round)."""


FAST_EXPORT_BATCH = 128
"""Export batch size for kiki's own exporters, whose items the request thread encoded (a
batch of 128 costs the export thread ~0.07 ms of joining bytes). Measured against 64 and
512 (docs/performance-log.md, cut 25): 64 meant ~1 voluntary context switch a request (each
stdout write hands the GIL to a runnable export thread) and ~25 us more CPU; 512 held the
GIL long enough per batch to add ~1.5-2 ms to the p99 through plain uvicorn."""


def _batch_sizes(env_prefix: str, exporter: object) -> dict[str, Any]:
    """``max_export_batch_size`` for a batch processor over ``exporter``.

    The user's ``OTEL_B*P_*`` sizes win, exactly as the SDK reads them.
    """
    for name in ("MAX_EXPORT_BATCH_SIZE", "MAX_QUEUE_SIZE"):
        if os.environ.get(env_prefix + name):
            return {}
    from ._otlp_http import FastLogExporter, FastSpanExporter

    if isinstance(exporter, FastSpanExporter | FastLogExporter):
        return {"max_export_batch_size": FAST_EXPORT_BATCH}
    return {"max_export_batch_size": EXPORT_BATCH}


def _build_tracing(settings: Settings, resource: Resource) -> TracerProvider:
    # The provider exists even with no exporter: spans then are non-recording but still
    # carry valid ids, which is what request ids and log correlation need.
    provider = TracerProvider(
        resource=resource, sampler=build_sampler(settings), shutdown_on_exit=False
    )
    exporter: SpanExporter | None = _console_or_otlp(
        settings, settings.traces_exporter, ConsoleSpanExporter, span_exporter
    )
    if exporter is not None:
        provider.add_span_processor(
            BatchSpanProcessor(exporter, **_batch_sizes("OTEL_BSP_", exporter))
        )
    return provider


def _build_metrics(settings: Settings, resource: Resource) -> MeterProvider:
    exporter: MetricExporter | None = _console_or_otlp(
        settings, settings.metrics_exporter, ConsoleMetricExporter, metric_exporter
    )
    readers: list[MetricReader] = []
    if exporter is not None:
        readers.append(
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=settings.metric_export_interval
            )
        )
    views = [
        View(
            instrument_name=name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS),
        )
        for name in _DURATION_INSTRUMENTS
    ]
    return MeterProvider(
        resource=resource, metric_readers=readers, views=views, shutdown_on_exit=False
    )


def _build_logs(settings: Settings, resource: Resource) -> LoggerProvider:
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    exporter: LogRecordExporter | None = _console_or_otlp(
        settings, settings.logs_exporter, ConsoleLogRecordExporter, log_exporter
    )
    if exporter is not None and settings.log_to_otel:
        provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter, **_batch_sizes("OTEL_BLRP_", exporter))
        )
    return provider


def _is_sdk(provider: object) -> bool:
    return isinstance(provider, TracerProvider | MeterProvider | LoggerProvider)


def _install(
    signal: str,
    current: Any,
    build: Callable[[Settings, Resource], Any],
    set_global: Callable[[Any], None],
    settings: Settings,
    resource: Resource,
    built: Providers,
) -> Any:
    """Join ``current`` if it is an SDK provider; else build ours and set it globally."""
    if _is_sdk(current):
        built.joined.append(signal)
        return current
    provider = build(settings, resource)
    set_global(provider)
    built.owned.append(provider)
    return provider


def build_providers(settings: Settings, resource: Resource) -> Providers:
    """Build the three providers and install them globally, joining SDK providers already set."""
    built = Providers(
        trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()
    )
    built.tracer_provider = _install(
        "traces",
        built.tracer_provider,
        _build_tracing,
        trace.set_tracer_provider,
        settings,
        resource,
        built,
    )
    built.meter_provider = _install(
        "metrics",
        built.meter_provider,
        _build_metrics,
        metrics.set_meter_provider,
        settings,
        resource,
        built,
    )
    built.logger_provider = _install(
        "logs",
        built.logger_provider,
        _build_logs,
        _logs.set_logger_provider,
        settings,
        resource,
        built,
    )
    return built
