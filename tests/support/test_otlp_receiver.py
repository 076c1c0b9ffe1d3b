"""Tests for the OTLP test receiver, driven by the real opentelemetry-sdk OTLP exporters.

The receiver is only useful if what it reports is exactly what an SDK exporter put on
the wire, so every round-trip test sends through the real HTTP and gRPC exporters and
compares against the ids/values the SDK itself holds.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import grpc  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue as OtelAnyValue

from .otlp_receiver import OTLPReceiver, ReceivedSpan, decode_request

ProtocolName = Literal["http", "grpc"]
REPO_ROOT = Path(__file__).resolve().parents[2]
RESOURCE = Resource.create({"service.name": "svc-under-test", "deployment.environment.name": "t"})


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    """A started receiver on free ports, stopped after the test."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(params=["http", "grpc"])
def protocol(request: pytest.FixtureRequest) -> ProtocolName:
    """Run the test once over OTLP/HTTP and once over OTLP/gRPC."""
    value: ProtocolName = request.param
    return value


def span_exporter(protocol: ProtocolName, rx: OTLPReceiver, **kw: Any) -> SpanExporter:
    if protocol == "http":
        return HttpSpanExporter(endpoint=rx.http_url("traces"), **kw)
    return GrpcSpanExporter(endpoint=rx.grpc_endpoint, insecure=True, **kw)


def make_spans(n: int = 1, name: str = "work") -> list[ReadableSpan]:
    """Finished SDK spans to feed straight into exporter.export()."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("kiki.test")
    for i in range(n):
        with tracer.start_as_current_span(name, attributes={"i": i}):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# ----------------------------------------------------------------------------- round trips


def test_spans_round_trip(rx: OTLPReceiver, protocol: ProtocolName) -> None:
    """Spans sent by the real exporter arrive with identical ids, parentage and data."""
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(span_exporter(protocol, rx)))
    tracer = provider.get_tracer("kiki.test", "1.2.3")
    attributes: dict[str, OtelAnyValue] = {
        "s": "text",
        "i": 42,
        "f": 1.5,
        "b": True,
        "ls": ["a", "b"],
        "li": [1, 2],
        "lf": [0.25],
        "lb": [True, False],
    }
    with (
        tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent,
        tracer.start_as_current_span("child", kind=SpanKind.CLIENT, attributes=attributes) as child,
    ):
        child.add_event("retry", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    got_parent = rx.wait_for_spans(name="parent")[0]
    got_child = rx.wait_for_spans(name="child")[0]
    parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()
    assert got_child.trace_id == format(child_ctx.trace_id, "032x") == got_parent.trace_id
    assert got_child.span_id == format(child_ctx.span_id, "016x")
    assert got_parent.span_id == format(parent_ctx.span_id, "016x")
    assert got_child.parent_span_id == got_parent.span_id
    assert got_parent.parent_span_id == ""
    assert (got_parent.kind, got_child.kind) == (SpanKind.SERVER.name, SpanKind.CLIENT.name)
    assert got_child.attributes == attributes
    assert (got_child.status_code, got_child.status_message) == ("ERROR", "boom")
    assert got_parent.status_code == "UNSET"
    assert [(e.name, e.attributes) for e in got_child.events] == [("retry", {"attempt": 2})]
    assert got_child.resource["service.name"] == "svc-under-test"
    assert (got_child.scope_name, got_child.scope_version) == ("kiki.test", "1.2.3")
    assert 0 < got_child.start_time_unix_nano <= got_child.end_time_unix_nano
    assert got_child.protocol == protocol
    assert rx.request_count("traces", protocol) == 2  # SimpleSpanProcessor: one per span
    assert rx.request_count("traces", protocol, outcome="ok") == 2


def test_logs_round_trip(rx: OTLPReceiver, protocol: ProtocolName) -> None:
    """Log records keep severity, structured body, attributes, event name and trace context."""
    exporter = (
        HttpLogExporter(endpoint=rx.http_url("logs"))
        if protocol == "http"
        else GrpcLogExporter(endpoint=rx.grpc_endpoint, insecure=True)
    )
    logger_provider = LoggerProvider(resource=RESOURCE)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logger_provider.get_logger("kiki.logs")
    tracer_provider = TracerProvider(resource=RESOURCE)
    body: OtelAnyValue = {"msg": "hello", "n": 1, "nested": {"k": [1, "x"]}}
    with tracer_provider.get_tracer("t").start_as_current_span("req") as span:
        logger.emit(
            severity_number=SeverityNumber.WARN,
            severity_text="WARNING",
            body=body,
            attributes={"user.id": "u1", "retry": 3},
            event_name="kiki.test.event",
            timestamp=1_700_000_000_123_456_789,
        )
    logger.emit(severity_number=SeverityNumber.INFO, body=b"\x00\x01")  # outside any span
    logger_provider.shutdown()
    tracer_provider.shutdown()

    first, second = rx.wait_for_logs(2)
    trace_id, span_id = hex_ids(span)  # type: ignore[arg-type]
    assert (first.trace_id, first.span_id) == (trace_id, span_id)
    assert rx.logs(trace_id=trace_id) == [first]
    assert (first.severity_number, first.severity_text) == (SeverityNumber.WARN.value, "WARNING")
    assert first.body == body
    assert first.attributes == {"user.id": "u1", "retry": 3}
    assert first.event_name == "kiki.test.event"
    assert first.scope_name == "kiki.logs"
    assert first.resource["service.name"] == "svc-under-test"
    assert first.time_unix_nano == 1_700_000_000_123_456_789
    assert second.time_unix_nano == 0
    assert second.observed_time_unix_nano > 0
    assert (second.trace_id, second.span_id, second.body) == ("", "", b"\x00\x01")


def test_metrics_round_trip(rx: OTLPReceiver, protocol: ProtocolName) -> None:
    """Sums, gauges, histograms and exponential histograms decode to the recorded values."""
    exporter = (
        HttpMetricExporter(endpoint=rx.http_url("metrics"))
        if protocol == "http"
        else GrpcMetricExporter(endpoint=rx.grpc_endpoint, insecure=True)
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=RESOURCE,
        views=[
            View(instrument_name="work.size", aggregation=ExponentialBucketHistogramAggregation())
        ],
    )
    meter = provider.get_meter("kiki.metrics")
    requests = meter.create_counter("requests", unit="{request}", description="reqs")
    requests.add(3, {"route": "/a"})
    requests.add(2, {"route": "/a"})
    requests.add(1, {"route": "/b"})
    meter.create_up_down_counter("in_flight").add(-4)
    latency = meter.create_histogram("latency", unit="ms")
    tracer_provider = TracerProvider(resource=RESOURCE)
    with tracer_provider.get_tracer("t").start_as_current_span("measured") as span:
        latency.record(5)  # recorded in a sampled span: carries an exemplar
    latency.record(50)
    meter.create_gauge("temperature").set(21.5)
    size = meter.create_histogram("work.size")
    for v in (1, 2, 4):
        size.record(v)
    provider.shutdown()  # final collection + export
    tracer_provider.shutdown()

    rx.wait_for_metrics("work.size")
    a = rx.latest_metric("requests", {"route": "/a"})
    b = rx.latest_metric("requests", {"route": "/b"})
    assert a is not None
    assert b is not None
    assert (a.kind, a.value, b.value) == ("sum", 5, 1)
    assert (a.unit, a.description, a.is_monotonic, a.temporality) == (
        "{request}",
        "reqs",
        True,
        "CUMULATIVE",
    )
    assert a.resource["service.name"] == "svc-under-test"
    assert a.scope_name == "kiki.metrics"
    in_flight = rx.latest_metric("in_flight")
    assert in_flight is not None
    assert (in_flight.value, in_flight.is_monotonic) == (-4, False)
    gauge = rx.latest_metric("temperature")
    assert gauge is not None
    assert (gauge.kind, gauge.value, gauge.temporality) == ("gauge", 21.5, None)
    hist = rx.latest_metric("latency")
    assert hist is not None
    assert (hist.kind, hist.count, hist.sum, hist.min, hist.max) == ("histogram", 2, 55, 5, 50)
    assert len(hist.bucket_counts) == len(hist.explicit_bounds) + 1
    assert sum(hist.bucket_counts) == 2
    assert hist.explicit_bounds[:3] == (0.0, 5.0, 10.0)  # SDK default boundaries
    trace_id, span_id = hex_ids(span)  # type: ignore[arg-type]
    assert [(e.trace_id, e.span_id, e.value) for e in hist.exemplars] == [(trace_id, span_id, 5)]
    exp = rx.latest_metric("work.size")
    assert exp is not None
    assert (exp.kind, exp.count, exp.sum, exp.min, exp.max) == ("exp_histogram", 3, 7, 1, 4)
    assert exp.exp_scale is not None
    assert sum(exp.exp_positive_bucket_counts) + (exp.exp_zero_count or 0) == 3


def test_delta_temporality_is_reported(rx: OTLPReceiver) -> None:
    """An exporter preferring DELTA for counters shows up as temporality "DELTA"."""
    exporter = HttpMetricExporter(
        endpoint=rx.http_url("metrics"),
        preferred_temporality={Counter: AggregationTemporality.DELTA},
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("m").create_counter("hits").add(7)
    provider.shutdown()
    [point] = rx.wait_for_metrics("hits")
    assert (point.value, point.temporality, point.is_monotonic) == (7, "DELTA", True)


# ----------------------------------------------------------------------------- wire level


def test_raw_bytes_and_headers_are_what_the_exporter_sent(
    rx: OTLPReceiver, protocol: ProtocolName
) -> None:
    """The raw request body equals the SDK encoder's bytes, and custom headers arrive."""
    spans = make_spans(3)
    exporter = span_exporter(protocol, rx, headers={"x-kiki-test": "yes"})
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()

    [raw] = rx.raw_requests("traces", protocol)
    assert raw.body == encode_spans(spans).SerializeToString()
    assert raw.headers["x-kiki-test"] == "yes"
    assert "OTel-OTLP-Exporter-Python" in raw.headers["user-agent"]
    assert decode_request("traces", raw.body, protocol) == rx.spans()
    assert rx.bytes_received("traces", protocol) == len(raw.body)


def test_http_gzip_from_exporter(rx: OTLPReceiver) -> None:
    """A gzip-compressing HTTP exporter is accepted; the raw body is stored decompressed."""
    spans = make_spans(1, name="x" * 2000)  # compressible
    exporter: SpanExporter = HttpSpanExporter(
        endpoint=rx.http_url("traces"), compression=HttpCompression.Gzip
    )
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    [raw] = rx.raw_requests()
    assert raw.content_encoding == "gzip"
    assert raw.wire_size < len(raw.body)
    assert [s.name for s in rx.spans()] == ["x" * 2000]


def test_grpc_gzip_from_exporter(rx: OTLPReceiver) -> None:
    """A gzip-compressing gRPC exporter is accepted (grpcio decompresses transparently)."""
    exporter = GrpcSpanExporter(
        endpoint=rx.grpc_endpoint, insecure=True, compression=grpc.Compression.Gzip
    )
    assert exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(rx.spans(name="work")) == 2


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("", lambda b: b)],
)
def test_http_answers_proper_export_response(
    rx: OTLPReceiver, encoding: str, compress: Any
) -> None:
    """Plain POSTs (any supported Content-Encoding) get a protobuf Export*ServiceResponse."""
    body = encode_spans(make_spans(1)).SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    if encoding:
        headers["Content-Encoding"] = encoding
    response = httpx.post(rx.http_url("traces"), content=compress(body), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = trace_service_pb2.ExportTraceServiceResponse.FromString(response.content)
    assert not parsed.HasField("partial_success")
    assert rx.raw_requests()[0].body == body
    assert len(rx.spans()) == 1


def test_http_rejects_what_a_collector_rejects(rx: OTLPReceiver) -> None:
    """Unknown path 404, GET 405, JSON 415, undecodable protobuf or bad gzip 400."""
    proto = {"Content-Type": "application/x-protobuf"}
    with httpx.Client() as client:
        assert (
            client.post(f"{rx.http_endpoint}/v1/nope", content=b"", headers=proto).status_code
            == 404
        )
        assert client.get(rx.http_url("traces")).status_code == 405
        json_headers = {"Content-Type": "application/json"}
        assert (
            client.post(rx.http_url("traces"), content=b"{}", headers=json_headers).status_code
            == 415
        )
        garbage = client.post(rx.http_url("traces"), content=b"\xff\xff\xff", headers=proto)
        assert garbage.status_code == 400
        bad_gzip = {**proto, "Content-Encoding": "gzip"}
        assert (
            client.post(rx.http_url("logs"), content=b"nope", headers=bad_gzip).status_code == 400
        )
    assert rx.request_count("traces", outcome="invalid") == 1
    assert rx.spans() == []


def test_grpc_services_match_generated_stubs(rx: OTLPReceiver) -> None:
    """The generated *_pb2_grpc client stubs can call all three Export methods."""
    with grpc.insecure_channel(f"127.0.0.1:{rx.grpc_port}") as channel:
        traces = trace_service_pb2_grpc.TraceServiceStub(channel).Export(  # type: ignore[no-untyped-call]
            trace_service_pb2.ExportTraceServiceRequest(), timeout=5
        )
        metrics = metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(  # type: ignore[no-untyped-call]
            metrics_service_pb2.ExportMetricsServiceRequest(), timeout=5
        )
        logs = logs_service_pb2_grpc.LogsServiceStub(channel).Export(  # type: ignore[no-untyped-call]
            logs_service_pb2.ExportLogsServiceRequest(), timeout=5
        )
    assert isinstance(traces, trace_service_pb2.ExportTraceServiceResponse)
    assert isinstance(metrics, metrics_service_pb2.ExportMetricsServiceResponse)
    assert isinstance(logs, logs_service_pb2.ExportLogsServiceResponse)
    assert rx.request_count(protocol="grpc", outcome="ok") == 3


# ----------------------------------------------------------------------------- fault modes


def test_error_mode_makes_exporter_fail(rx: OTLPReceiver, protocol: ProtocolName) -> None:
    """Error mode (503 / UNAVAILABLE) makes the exporter report FAILURE and stores nothing."""
    rx.mode = "error"
    exporter = span_exporter(protocol, rx, timeout=0.5)  # backoff (~1 s) > budget: no retry
    started = time.monotonic()
    assert exporter.export(make_spans(1)) == SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.0
    exporter.shutdown()
    assert rx.request_count("traces", protocol, outcome="error") >= 1
    assert len(rx.raw_requests()) >= 1  # refused requests are still visible raw
    assert rx.spans() == []


def test_non_retryable_error_status_is_configurable(protocol: ProtocolName) -> None:
    """error_http_status=400 / INVALID_ARGUMENT: the exporter gives up after exactly one try."""
    with OTLPReceiver(
        mode="error", error_http_status=400, error_grpc_code="INVALID_ARGUMENT"
    ) as rx:
        exporter = span_exporter(protocol, rx, timeout=10)
        started = time.monotonic()
        assert exporter.export(make_spans(1)) == SpanExportResult.FAILURE
        assert time.monotonic() - started < 2.0
        exporter.shutdown()
        assert rx.request_count() == 1


def test_hang_mode_exporter_times_out(rx: OTLPReceiver, protocol: ProtocolName) -> None:
    """Hang mode never answers: the exporter's own timeout bounds the export call."""
    rx.mode = "hang"
    exporter = span_exporter(protocol, rx, timeout=0.5)
    started = time.monotonic()
    assert exporter.export(make_spans(1)) == SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.0
    exporter.shutdown()
    # The receiver notices the client gave up and frees the handler thread.
    rx.wait_for_requests(1, outcome="hang", timeout=3)
    assert rx.spans() == []


def test_switching_out_of_hang_answers_the_waiting_request(
    rx: OTLPReceiver, protocol: ProtocolName
) -> None:
    """A request hung in hang mode is answered (and stored) once the mode becomes "ok"."""
    rx.mode = "hang"
    exporter = span_exporter(protocol, rx, timeout=5)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(exporter.export(make_spans(1))))
    worker.start()
    rx.wait_for_requests(1, timeout=3)
    time.sleep(0.1)
    assert results == []  # still hanging
    rx.mode = "ok"
    worker.join(timeout=3)
    exporter.shutdown()
    assert results == [SpanExportResult.SUCCESS]
    assert len(rx.spans()) == 1


def test_stop_is_prompt_with_hung_requests_and_idle_connections(protocol: ProtocolName) -> None:
    """stop() returns quickly although a request is hung and a keep-alive connection idles."""
    rx = OTLPReceiver().start()
    idle = httpx.Client()  # an idle keep-alive connection the HTTP server must not wait for
    ok = idle.post(
        rx.http_url("traces"), content=b"", headers={"Content-Type": "application/x-protobuf"}
    )
    assert ok.status_code == 200
    rx.mode = "hang"
    exporter = span_exporter(protocol, rx, timeout=1.0)
    worker = threading.Thread(target=exporter.export, args=(make_spans(1),))
    worker.start()
    rx.wait_for_requests(1, protocol=protocol, signal="traces", timeout=3)
    rx.wait_for_requests(2, timeout=3)

    started = time.monotonic()
    rx.stop()
    assert time.monotonic() - started < 1.0
    rx.stop()  # idempotent
    worker.join(timeout=5)
    assert not worker.is_alive()
    exporter.shutdown()
    idle.close()
    assert rx.request_count(outcome="hang") == 1


def test_mode_rejects_unknown_values(rx: OTLPReceiver) -> None:
    """A typo in a mode name fails loudly instead of silently behaving like "ok"."""
    with pytest.raises(ValueError, match="mode must be one of"):
        rx.mode = "broken"  # type: ignore[assignment]


# ----------------------------------------------------------------------------- helpers & modes


def test_wait_for_timeout_explains_what_was_received(rx: OTLPReceiver) -> None:
    """On timeout wait_for raises AssertionError listing what did arrive."""
    exporter = span_exporter("http", rx)
    exporter.export(make_spans(1, name="the-only-span"))
    exporter.shutdown()
    with pytest.raises(AssertionError, match="the-only-span") as info:
        rx.wait_for_spans(name="missing", timeout=0.1)
    assert "name='missing'" in str(info.value)
    assert "http/traces=1" in str(info.value)


def test_wait_for_returns_predicate_value(rx: OTLPReceiver) -> None:
    """wait_for returns the predicate's first truthy value, waking as soon as data arrives."""
    exporter = span_exporter("grpc", rx)
    timer = threading.Timer(0.1, lambda: exporter.export(make_spans(2)))
    timer.start()
    found: list[ReceivedSpan] = rx.wait_for(lambda: rx.spans(name="work"), timeout=5)
    timer.join()
    exporter.shutdown()
    assert len(found) >= 1


def test_clear_forgets_everything(rx: OTLPReceiver) -> None:
    """clear() empties data, raw requests and counters."""
    exporter = span_exporter("http", rx)
    exporter.export(make_spans(1))
    exporter.shutdown()
    rx.clear()
    assert (rx.spans(), rx.raw_requests(), rx.request_count(), rx.bytes_received()) == (
        [],
        [],
        0,
        0,
    )


def test_discard_mode_only_counts() -> None:
    """discard=True answers OK and counts requests and bytes but decodes and keeps nothing."""
    with OTLPReceiver(discard=True) as rx:
        protocols: tuple[ProtocolName, ...] = ("http", "grpc")
        for protocol in protocols:
            exporter = span_exporter(protocol, rx)
            assert exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
            exporter.shutdown()
        assert rx.request_count() == 2
        assert rx.request_count(outcome="ok") == 2
        assert rx.bytes_received() > 0
        assert rx.spans() == []
        assert rx.raw_requests() == []


def test_concurrent_exports_are_all_counted(rx: OTLPReceiver) -> None:
    """Many threads exporting over both protocols at once lose nothing."""
    spans = make_spans(3)

    def send(protocol: ProtocolName) -> None:
        exporter = span_exporter(protocol, rx)
        for _ in range(5):
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()

    workers = [threading.Thread(target=send, args=(p,)) for p in ("http", "grpc") * 4]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    assert rx.request_count() == 40
    assert rx.request_count("traces", "http") == rx.request_count("traces", "grpc") == 20
    assert len(rx.spans()) == 120


def test_given_ports_are_used_and_busy_ports_fail() -> None:
    """Explicit ports are honoured; a port already in use makes start() raise."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        http_port, grpc_port = a.getsockname()[1], b.getsockname()[1]
    with OTLPReceiver(http_port=http_port, grpc_port=grpc_port) as rx:
        assert rx.http_endpoint == f"http://127.0.0.1:{http_port}"
        assert rx.grpc_endpoint == f"http://127.0.0.1:{grpc_port}"
        with pytest.raises(OSError, match="in use"):
            OTLPReceiver(http_port=http_port).start()


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_endpoints_records_and_counts() -> None:
    """The CLI announces its endpoints, prints records with --print, counts on SIGTERM.

    (A stderr pipe is only read at the end; the CLI writes nothing there unless it breaks.)
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.otlp_receiver",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--print",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        endpoints = json.loads(proc.stdout.readline())
        exporter: SpanExporter = HttpSpanExporter(
            endpoint=f"{endpoints['http_endpoint']}/v1/traces"
        )
        assert exporter.export(make_spans(1, name="from-cli-test")) == SpanExportResult.SUCCESS
        exporter.shutdown()
        exporter_grpc = GrpcSpanExporter(endpoint=endpoints["grpc_endpoint"], insecure=True)
        assert exporter_grpc.export(make_spans(1)) == SpanExportResult.SUCCESS
        exporter_grpc.shutdown()
        assert "from-cli-test" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        rest, errors = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Warning" not in errors  # e.g. runpy's "found in sys.modules" double-import warning
    counts = json.loads(rest.strip().splitlines()[-1])
    assert counts["requests"]["http"]["traces"] == 1
    assert counts["requests"]["grpc"]["traces"] == 1
    assert counts["items"]["spans"] == 2
