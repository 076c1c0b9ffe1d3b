"""The fast OTLP/HTTP exporter against the real OTLP receiver, and how it is selected.

The receiver decodes with opentelemetry-proto, so these prove the wire format end to end
(plain and gzip), the failure behaviour (error, hung, refused collector: a bounded wait,
then the batch is dropped) and that ``KIKI_OTEL_EXPORTER=official`` keeps the official path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from kiki_otel._exporters import log_exporter, span_exporter
from kiki_otel._otlp_encode import encode_logs, encode_spans
from kiki_otel._otlp_http import FastLogExporter, FastSpanExporter, OTLPHttpClient
from kiki_otel._settings import Settings
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import free_port
from tests.test_otlp_encode import _logs, _spans


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_spans_and_logs_arrive_and_decode(receiver: OTLPReceiver, compression: str) -> None:
    """The receiver accepts our requests and decodes the same spans, ids and attributes;
    the body it got is exactly what the encoder produced (after undoing gzip)."""
    spans, logs = _spans(), _logs()
    span_exporter_ = FastSpanExporter(
        OTLPHttpClient(receiver.http_url("traces"), compression=compression)
    )
    log_exporter_ = FastLogExporter(
        OTLPHttpClient(receiver.http_url("logs"), compression=compression, headers={"a": "b"})
    )
    assert span_exporter_.export(spans) is SpanExportResult.SUCCESS
    assert span_exporter_.export(spans[:1]) is SpanExportResult.SUCCESS  # reused connection
    assert log_exporter_.export(logs) is LogRecordExportResult.SUCCESS
    got = receiver.wait_for_spans(len(spans) + 1)
    server = next(s for s in got if s.name == "GET /items/{id}")
    assert server.kind == "SERVER"
    assert server.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["ints"] == [1, 2, 3]
    assert server.resource["service.name"] == "svc"
    received_logs = receiver.wait_for_logs(len(logs))
    assert {str(rec.body) for rec in received_logs} >= {"plain", "http.request"}
    raw_spans = receiver.raw_requests("traces")
    assert raw_spans[0].body == encode_spans(spans)
    assert receiver.raw_requests("logs")[0].body == encode_logs(logs)
    span_exporter_.shutdown()
    log_exporter_.shutdown()


def test_error_status_drops_the_batch(receiver: OTLPReceiver) -> None:
    """A non-retryable error answer fails the export at once (no retry storm)."""
    receiver.mode = "error"
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces"), timeout=5.0))
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 4.0


def test_hung_collector_is_bounded_by_the_timeout(receiver: OTLPReceiver) -> None:
    """A collector that never answers costs at most the export timeout."""
    receiver.mode = "hang"
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces"), timeout=0.5))
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3.0


def test_refused_collector_fails_within_the_timeout_and_shutdown_interrupts() -> None:
    """Connection refused is retried with backoff only until the timeout; shutdown stops it."""
    client = OTLPHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1.0)
    exporter = FastSpanExporter(client)
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.5
    exporter.shutdown()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE  # closed: no network at all


def test_fast_is_the_default_and_official_stays_selectable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """http/protobuf uses the fast exporter unless KIKI_OTEL_EXPORTER=official, gRPC or
    per-signal settings (headers, certificates) ask for the official one."""
    settings = Settings(exporter_otlp_endpoint="http://127.0.0.1:4318")
    assert isinstance(span_exporter(settings), FastSpanExporter)
    assert isinstance(log_exporter(settings), FastLogExporter)
    monkeypatch.setenv("KIKI_OTEL_EXPORTER", "official")
    official = Settings(exporter_otlp_endpoint="http://127.0.0.1:4318")
    assert official.exporter == "official"
    assert isinstance(span_exporter(official), OTLPSpanExporter)
    assert isinstance(log_exporter(official), OTLPLogExporter)
    monkeypatch.delenv("KIKI_OTEL_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x=y")
    assert isinstance(span_exporter(settings), OTLPSpanExporter)
    assert isinstance(log_exporter(settings), FastLogExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://127.0.0.1:9/custom/logs")
    fast_logs = log_exporter(settings)
    assert isinstance(fast_logs, FastLogExporter)
    assert fast_logs._client.url == "http://127.0.0.1:9/custom/logs"


def test_bad_exporter_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown KIKI_OTEL_EXPORTER fails at startup with the variable in the message."""
    from kiki_otel._settings import ConfigurationError, load_settings

    monkeypatch.setenv("KIKI_OTEL_EXPORTER", "turbo")
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_EXPORTER"):
        load_settings(Settings, {})
