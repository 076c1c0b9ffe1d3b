"""The benchmark service: one FastAPI route, telemetry chosen by ``BENCH_SCENARIO``.

``uvicorn bench.app:app`` with ``BENCH_SCENARIO`` one of:

- ``bare``: no telemetry at all (FastAPI's native telemetry explicitly off).
- ``kiki``: ``kiki_otel.configure(app)`` with its defaults (sampling etc. from ``OTEL_*``).
- ``native``: SDK providers with the official OTLP/HTTP exporters, FastAPI's native telemetry on.
- ``contrib``: the same providers plus ``opentelemetry-instrumentation-fastapi``.

The OTLP endpoint comes from ``OTEL_EXPORTER_OTLP_ENDPOINT`` in every case.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

SCENARIO = os.environ.get("BENCH_SCENARIO", "bare")


def _sdk_providers() -> None:
    """What a hand-rolled OTel setup looks like: the SDK with official OTLP/HTTP exporters."""
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": f"bench-{SCENARIO}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    _logs.set_logger_provider(logger_provider)


def build() -> FastAPI:
    """The app for ``SCENARIO``."""
    if SCENARIO == "bare":
        app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    elif SCENARIO == "native":
        _sdk_providers()
        app = FastAPI()
    else:
        app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    if SCENARIO == "kiki":
        import kiki_otel

        kiki_otel.configure(app, service_name="bench-kiki")
    elif SCENARIO == "contrib":
        _sdk_providers()
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    elif SCENARIO not in ("bare", "native"):
        raise SystemExit(f"unknown BENCH_SCENARIO {SCENARIO!r}")
    return app


app = build()
