"""OTLP exporters for each signal and protocol, configured from resolved settings.

Values come from :class:`Settings` (so keyword overrides and ``.env`` work), except where a
per-signal standard variable such as ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set: the spec
gives it precedence. Those are read from the process environment, as the official exporters
do (``configure()`` copies ``.env``'s there first), and checked by
:func:`check_signal_endpoints` before anything is built.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from ._health_checks import scrub
from ._settings import ConfigurationError, Settings, check_endpoint

__all__ = ["check_signal_endpoints", "log_exporter", "metric_exporter", "span_exporter"]


def _signal_variable(signal: str) -> str:
    return f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"


def _signal_endpoint(signal: str) -> str | None:
    """The per-signal endpoint variable, stripped; None if unset or blank (as for the base)."""
    return os.environ.get(_signal_variable(signal), "").strip() or None


def check_signal_endpoints(settings: Settings) -> None:
    """Refuse a per-signal endpoint that ``OTEL_EXPORTER_OTLP_ENDPOINT`` would refuse.

    Called by ``configure()`` before any provider is installed: otherwise a bad one raises
    a bare ValueError half-way through, or (metrics) passes and fails every export. Only
    signals exported over OTLP are checked; the URL is shown with credentials masked.
    """
    chosen = {
        "traces": settings.traces_exporter,
        "metrics": settings.metrics_exporter,
        "logs": settings.logs_exporter,
    }
    for signal, exporter in chosen.items():
        endpoint = _signal_endpoint(signal)
        if exporter != "otlp" or endpoint is None:
            continue
        try:
            check_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigurationError(
                f"{_signal_variable(signal)}: {exc} (got {scrub(endpoint)!r})"
            ) from None


def _common(settings: Settings, signal: str) -> dict[str, Any]:
    per_signal = _signal_endpoint(signal)
    grpc = settings.exporter_otlp_protocol == "grpc"
    base = settings.otlp_endpoint()
    endpoint = per_signal or (base if grpc else f"{base}/v1/{signal}")
    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "headers": settings.otlp_headers() or None,
        "timeout": settings.exporter_otlp_timeout / 1000.0,
    }
    if grpc:
        from grpc import Compression

        gzip = settings.exporter_otlp_compression == "gzip"
        kwargs["compression"] = Compression.Gzip if gzip else Compression.NoCompression
        if per_signal is None and endpoint.startswith("http://"):
            kwargs["insecure"] = True  # with its own variable, *_INSECURE may still decide
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

        kwargs["compression"] = HttpCompression(settings.exporter_otlp_compression)
    return kwargs


def _fast_endpoint(settings: Settings, signal: str) -> str | None:
    """Where kiki's fast exporter sends ``signal``, or None when only the official one fits.

    The fast exporter covers OTLP/HTTP and OTLP/gRPC over ``http://`` (plaintext) and
    ``https://`` (system roots). Client certificates, custom CAs, ``*_INSECURE`` and
    per-signal headers/timeout/compression variables are left to the official exporters.
    """
    if settings.exporter != "fast":
        return None
    grpc = settings.exporter_otlp_protocol == "grpc"
    prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    for name, value in os.environ.items():
        if not value or not name.startswith("OTEL_EXPORTER_OTLP_"):
            continue
        if "CERTIFICATE" in name or "CLIENT_KEY" in name or (grpc and "INSECURE" in name):
            return None  # mTLS / custom CAs / gRPC security choices: the official exporter
        if name.startswith(prefix) and name != f"{prefix}ENDPOINT":
            return None  # per-signal headers/timeout/compression: leave them to it too
    endpoint = _signal_endpoint(signal)
    if grpc:
        endpoint = endpoint or settings.otlp_endpoint()
        return endpoint if endpoint.startswith(("http://", "https://")) else None
    return endpoint or f"{settings.otlp_endpoint()}/v1/{signal}"


def _fast_client(settings: Settings, endpoint: str, signal: str) -> Any:
    options: dict[str, Any] = {
        "headers": settings.otlp_headers(),
        "timeout": settings.exporter_otlp_timeout / 1000.0,
        "compression": settings.exporter_otlp_compression,
    }
    if settings.exporter_otlp_protocol == "grpc":
        from ._otlp_grpc import LOGS_METHOD, TRACES_METHOD, OTLPGrpcClient

        method = TRACES_METHOD if signal == "traces" else LOGS_METHOD
        return OTLPGrpcClient(endpoint, method, **options)
    from ._otlp_http import OTLPHttpClient

    return OTLPHttpClient(endpoint, **options)


def span_exporter(settings: Settings) -> SpanExporter:
    """The OTLP span exporter for the configured protocol."""
    endpoint = _fast_endpoint(settings, "traces")
    if endpoint is not None:
        from ._otlp_http import FastSpanExporter

        return FastSpanExporter(_fast_client(settings, endpoint, "traces"))
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
    endpoint = _fast_endpoint(settings, "logs")
    if endpoint is not None:
        from ._otlp_http import FastLogExporter

        return FastLogExporter(_fast_client(settings, endpoint, "logs"))
    if settings.exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(**_common(settings, "logs"))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter(**_common(settings, "logs"))
