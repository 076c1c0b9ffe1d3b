"""OTLP exporters for each signal and protocol, configured from resolved settings.

Values come from :class:`Settings` (so keyword overrides and ``.env`` work), except where a
per-signal standard variable such as ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set: then the
exporter is left to read it itself, as the spec gives the per-signal variable precedence.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from ._settings import Settings

__all__ = ["log_exporter", "metric_exporter", "span_exporter"]


def _common(settings: Settings, signal: str) -> dict[str, Any]:
    per_signal = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    grpc = settings.exporter_otlp_protocol == "grpc"
    endpoint: str | None = None
    if not os.environ.get(per_signal):
        base = settings.otlp_endpoint()
        endpoint = base if grpc else f"{base}/v1/{signal}"
    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "headers": settings.otlp_headers() or None,
        "timeout": settings.exporter_otlp_timeout / 1000.0,
    }
    if grpc:
        from grpc import Compression

        gzip = settings.exporter_otlp_compression == "gzip"
        kwargs["compression"] = Compression.Gzip if gzip else Compression.NoCompression
        if endpoint is not None and endpoint.startswith("http://"):
            kwargs["insecure"] = True
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

        kwargs["compression"] = HttpCompression(settings.exporter_otlp_compression)
    return kwargs


def span_exporter(settings: Settings) -> SpanExporter:
    """The OTLP span exporter for the configured protocol."""
    if settings.exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(**_common(settings, "traces"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(**_common(settings, "traces"))


def metric_exporter(settings: Settings) -> MetricExporter:
    """The OTLP metric exporter for the configured protocol (cumulative, for Prometheus)."""
    if settings.exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(**_common(settings, "metrics"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(**_common(settings, "metrics"))


def log_exporter(settings: Settings) -> LogRecordExporter:
    """The OTLP log record exporter for the configured protocol."""
    if settings.exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(**_common(settings, "logs"))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter(**_common(settings, "logs"))
