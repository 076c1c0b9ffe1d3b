"""pytest-benchmark micro-benchmarks.

``.venv/bin/pytest bench/test_micro.py --benchmark-enable --benchmark-only`` (add
``--benchmark-columns=min,median``). The test run collects them too, with
``--benchmark-disable`` (pyproject): each runs once, untimed, so they cannot break unseen.
They time the pieces the budget is made of: span encoding (ours vs official), the JSON log
chain (stdout only, and with the OTel record), the access line (through structlog and
direct), a duration-histogram record and the request
span's start/end (SDK vs kiki's direct paths), one request through the server middleware,
and ``configure()``.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import kiki_otel
from kiki_otel import testing
from kiki_otel._otlp_encode import encode_spans


@pytest.fixture(scope="module")
def server_spans() -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("kiki_otel.http.server")
    for i in range(512):
        span = tracer.start_span(
            "GET",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "url.scheme": "http",
                "url.path": f"/items/{i % 100}",
                "network.protocol.version": "1.1",
                "server.address": "127.0.0.1",
                "server.port": 8000,
                "client.address": "127.0.0.1",
                "user_agent.original": "wrk",
            },
        )
        span.update_name("GET /items/{item_id}")
        span.set_attribute("http.route", "/items/{item_id}")
        span.set_attribute("http.response.status_code", 200)
        span.end()
    return list(exporter.get_finished_spans())


def test_encode_512_spans_kiki(benchmark: Any, server_spans: list[Any]) -> None:
    benchmark(encode_spans, server_spans)


def test_encode_512_spans_kiki_pure(
    benchmark: Any, server_spans: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without the C encoder (``KIKI_OTEL_NO_SPEEDUPS=1``): the Python one alone."""
    from kiki_otel import _otlp_encode

    for name in ("_native_fields", "_native_span", "_native_log_event"):
        monkeypatch.setattr(_otlp_encode, name, None)
    benchmark(encode_spans, server_spans)


def test_encode_512_spans_official(benchmark: Any, server_spans: list[Any]) -> None:
    benchmark(lambda: official(server_spans).SerializeToString())


_ROUTE_ATTRS = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "network.protocol.version": "1.1",
    "http.route": "/items/{item_id}",
    "http.response.status_code": 200,
}


@pytest.mark.parametrize("path", ["sdk", "kiki"])
def test_duration_histogram_record(benchmark: Any, path: str) -> None:
    """One request-duration record: SDK ``Histogram.record`` vs kiki's direct aggregation."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from kiki_otel._fast_histogram import fast_histogram

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    histogram = meter.create_histogram("http.server.request.duration", unit="s")
    recorder: Any = fast_histogram(histogram) if path == "kiki" else histogram
    recorder.record(0.004, _ROUTE_ATTRS)
    benchmark(recorder.record, 0.004, _ROUTE_ATTRS)


@pytest.mark.parametrize("path", ["sdk", "kiki"])
def test_request_span_start_end(benchmark: Any, path: str) -> None:
    """The request span: start with ~9 attributes, two more at the end, end into the batch
    queue of the fast exporter. SDK ``start_span``/``end`` vs kiki's ``DirectSpans``."""
    from opentelemetry import context as otel_context
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from kiki_otel._fast_span import DirectSpans
    from kiki_otel._otlp_http import FastSpanExporter, OTLPHttpClient

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    exporter = FastSpanExporter(OTLPHttpClient("http://127.0.0.1:9/v1/traces"))
    # Queue never exported during the run (the export is timed in the encode benchmarks).
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=2_000_000,
        schedule_delay_millis=3_600_000,
        max_export_batch_size=2_000_000,
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("kiki_otel.http.server")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    assert direct._batch is not None
    parent = otel_context.Context()
    end_attributes = {"http.route": "/items/{item_id}", "http.response.status_code": 200}

    def sdk() -> None:
        span = tracer.start_span("GET", parent, kind=SpanKind.SERVER, attributes=_START_ATTRS)
        span.set_attributes(end_attributes)
        span.end()

    def kiki() -> None:
        span = direct.start("GET", parent, dict(_START_ATTRS))
        direct.set_attributes(span, end_attributes)
        direct.end(span)

    benchmark.pedantic(sdk if path == "sdk" else kiki, rounds=20_000, iterations=5)
    processor._batch_processor._queue.clear()
    exporter.shutdown()


_START_ATTRS = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/items/7",
    "network.protocol.version": "1.1",
    "server.address": "127.0.0.1",
    "server.port": 8000,
    "client.address": "127.0.0.1",
    "user_agent.original": "wrk",
}


@pytest.fixture
def quiet_stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    sink = io.TextIOWrapper(io.BytesIO(), write_through=True)
    monkeypatch.setattr(sys, "stdout", sink)
    yield
    testing.reset(timeout=1.0)


@pytest.mark.parametrize("otel", [False, True], ids=["stdout-only", "with-otel-record"])
def test_log_line_in_a_span(benchmark: Any, quiet_stdout: None, otel: bool) -> None:
    """One correlated JSON log line (inside a span); with its OTel log record or without."""
    telemetry = kiki_otel.configure(
        service_name="bench",
        log_to_otel=otel,
        exporter_otlp_endpoint="http://127.0.0.1:9",  # never reached within the benchmark
    )
    log = kiki_otel.get_logger("bench")
    with telemetry.tracer("bench").start_as_current_span("s"):
        benchmark(log.info, "plan.loaded", plan_id=5, user="u1")


@pytest.mark.parametrize("path", ["structlog", "direct"])
def test_access_line(benchmark: Any, quiet_stdout: None, path: str) -> None:
    """The middleware's access line with its OTel record: through structlog or built directly."""
    from kiki_otel._access_log import DirectAccessLog, StructlogAccessLog

    telemetry = kiki_otel.configure(
        service_name="bench", exporter_otlp_endpoint="http://127.0.0.1:9"
    )
    log = DirectAccessLog() if path == "direct" else StructlogAccessLog()
    with telemetry.tracer("bench").start_as_current_span("s"):  # the line's ids come from it
        benchmark(log, "GET", "/plans/7", "/plans/{plan_id}", 200, 0.123)


def test_request_through_server_middleware(benchmark: Any, quiet_stdout: None) -> None:
    """One GET through ServerTelemetry (span, metrics, access log, request id) to a tiny app."""
    from bench.inprocess import _scope

    async def tiny(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    telemetry = kiki_otel.configure(
        service_name="bench", exporter_otlp_endpoint="http://127.0.0.1:9"
    )
    app = telemetry.wrap(tiny)
    loop = asyncio.new_event_loop()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    scope = _scope(b"/items/1")
    benchmark(lambda: loop.run_until_complete(app(dict(scope), receive, send)))
    loop.close()


def test_configure(benchmark: Any, quiet_stdout: None) -> None:
    """configure() from scratch (imports already done), reset between rounds."""

    def setup() -> None:
        testing.reset(timeout=1.0)

    benchmark.pedantic(
        lambda: kiki_otel.configure(
            service_name="bench", exporter_otlp_endpoint="http://127.0.0.1:9"
        ),
        setup=setup,
        rounds=20,
    )
