"""The fast exporters over OTLP/gRPC against the real OTLP receiver, and how they are selected.

The receiver's gRPC front end is grpcio with the generated service handlers: it decodes
with opentelemetry-proto, so these prove the request bytes, metadata and compression end to
end, and the failure behaviour (retryable and final codes, hung and refused collectors).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from kiki_otel._exporters import log_exporter, span_exporter
from kiki_otel._otlp_encode import encode_logs, encode_spans
from kiki_otel._otlp_grpc import LOGS_METHOD, TRACES_METHOD, OTLPGrpcClient
from kiki_otel._otlp_http import FastLogExporter, FastSpanExporter
from kiki_otel._settings import Settings
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import free_port
from tests.test_otlp_encode import _logs, _spans


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_spans_and_logs_arrive_and_decode(receiver: OTLPReceiver, compression: str) -> None:
    """Same spans and records decoded by the receiver; the request bytes are the encoder's,
    the headers arrive as (lower-cased) metadata; gzip is asked for per call."""
    spans, logs = _spans(), _logs()
    spans_out = FastSpanExporter(
        OTLPGrpcClient(receiver.grpc_endpoint, TRACES_METHOD, compression=compression)
    )
    logs_out = FastLogExporter(
        OTLPGrpcClient(
            receiver.grpc_endpoint, LOGS_METHOD, compression=compression, headers={"X-Team": "a"}
        )
    )
    assert spans_out.export(spans) is SpanExportResult.SUCCESS
    assert spans_out.export(spans[:1]) is SpanExportResult.SUCCESS  # the same channel
    assert logs_out.export(logs) is LogRecordExportResult.SUCCESS
    got = receiver.wait_for_spans(len(spans) + 1)
    server = next(s for s in got if s.name == "GET /items/{id}")
    assert (server.kind, server.protocol) == ("SERVER", "grpc")
    assert server.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert server.attributes["ints"] == [1, 2, 3]
    assert {str(r.body) for r in receiver.wait_for_logs(len(logs))} >= {"plain", "http.request"}
    (first_spans, _) = receiver.raw_requests("traces")
    assert first_spans.body == encode_spans(spans)
    (raw_logs,) = receiver.raw_requests("logs")
    assert raw_logs.body == encode_logs(logs)
    assert raw_logs.headers["x-team"] == "a"
    # grpcio undoes message compression before the handler sees it (and hides its metadata):
    # what is checkable is that the calls ask for it.
    expected = grpc.Compression.Gzip if compression == "gzip" else None
    assert logs_out._client._compression is expected
    spans_out.shutdown()
    logs_out.shutdown()


def test_retryable_code_is_retried_until_the_timeout() -> None:
    """UNAVAILABLE (a collector restarting) is retried with backoff until the export
    timeout, then the batch is dropped; the attempts reached the receiver."""
    with OTLPReceiver(mode="error", error_grpc_code="UNAVAILABLE") as rx:
        exporter = FastSpanExporter(OTLPGrpcClient(rx.grpc_endpoint, TRACES_METHOD, timeout=2.5))
        started = time.monotonic()
        assert exporter.export(_spans()) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 5.0  # allowed: the timeout is the behaviour
        assert len(rx.raw_requests("traces")) >= 2
        rx.mode = "ok"  # back: the next batch goes through
        assert exporter.export(_spans()) is SpanExportResult.SUCCESS
        exporter.shutdown()


def test_final_code_drops_the_batch_at_once() -> None:
    """A code the spec does not retry (INVALID_ARGUMENT) fails after one attempt."""
    with OTLPReceiver(mode="error", error_grpc_code="INVALID_ARGUMENT") as rx:
        exporter = FastSpanExporter(OTLPGrpcClient(rx.grpc_endpoint, TRACES_METHOD, timeout=5.0))
        assert exporter.export(_spans()) is SpanExportResult.FAILURE
        assert len(rx.raw_requests("traces")) == 1
        exporter.shutdown()


def test_hung_collector_is_bounded_by_the_timeout(receiver: OTLPReceiver) -> None:
    """A collector that never answers costs at most the export timeout."""
    receiver.mode = "hang"
    exporter = FastSpanExporter(OTLPGrpcClient(receiver.grpc_endpoint, TRACES_METHOD, timeout=0.5))
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3.0  # allowed: the timeout is the behaviour
    receiver.mode = "ok"
    exporter.shutdown()


def test_refused_collector_fails_within_the_timeout_and_shutdown_interrupts() -> None:
    """Nothing listening: retried until the timeout; after shutdown no attempt at all."""
    client = OTLPGrpcClient(f"http://127.0.0.1:{free_port()}", TRACES_METHOD, timeout=1.0)
    exporter = FastSpanExporter(client)
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.5  # allowed: the timeout is the behaviour
    exporter.shutdown()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE


def test_endpoint_must_be_a_url() -> None:
    with pytest.raises(ValueError, match="http"):
        OTLPGrpcClient("collector:4317", TRACES_METHOD)


def test_grpc_uses_the_fast_exporter_unless_security_settings_need_the_official(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC over http:// or https:// goes fast; certificates, *_INSECURE, per-signal
    settings, an endpoint without a scheme or KIKI_OTEL_EXPORTER=official keep the official."""
    settings = Settings(
        exporter_otlp_endpoint="http://127.0.0.1:4317", exporter_otlp_protocol="grpc"
    )
    fast_spans, fast_logs = span_exporter(settings), log_exporter(settings)
    assert isinstance(fast_spans, FastSpanExporter)
    assert isinstance(fast_logs, FastLogExporter)
    assert isinstance(fast_spans._client, OTLPGrpcClient)
    assert fast_spans._client.url == f"http://127.0.0.1:4317{TRACES_METHOD}"
    assert fast_logs._client.url == f"http://127.0.0.1:4317{LOGS_METHOD}"
    for name, value in (
        ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=b"),
        ("KIKI_OTEL_EXPORTER", "official"),
    ):
        monkeypatch.setenv(name, value)
        chosen = Settings(
            exporter_otlp_endpoint="http://127.0.0.1:4317", exporter_otlp_protocol="grpc"
        )
        assert isinstance(span_exporter(chosen), OTLPSpanExporter), name
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "collector:4317")
    assert isinstance(log_exporter(settings), OTLPLogExporter)


def test_the_collectors_retry_delay_is_honoured() -> None:
    """RESOURCE_EXHAUSTED with a ``RetryInfo`` trailer (a collector shedding load): the
    retry waits the delay it asked for (0.2 s here), not our 1 s first backoff."""
    from google.protobuf.duration_pb2 import Duration
    from google.rpc.error_details_pb2 import RetryInfo

    calls: list[float] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(time.monotonic())
        if len(calls) == 1:
            info = RetryInfo(retry_delay=Duration(nanos=200_000_000)).SerializeToString()
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", info),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "memory limiter")
        return b""

    with _grpc_server(export) as endpoint:
        client = OTLPGrpcClient(endpoint, TRACES_METHOD, timeout=5.0)
        assert client.post(encode_spans(_spans())) is True
        assert len(calls) == 2
        assert 0.15 < calls[1] - calls[0] < 0.75  # allowed: the asked delay (ours: 0.8-1.2 s)
        client.close()


def test_a_forked_worker_gets_its_own_channel_and_lock(receiver: OTLPReceiver) -> None:
    """The after-fork hook drops the parent's channel and makes a new lock (the parent's
    exporter thread may have held it at the fork); the next export makes a new channel.
    The real fork is tests/integration/test_prefork.py (gunicorn --preload over gRPC:
    every worker's spans and logs arrive)."""
    client = OTLPGrpcClient(receiver.grpc_endpoint, TRACES_METHOD, timeout=5.0)
    assert client.post(encode_spans(_spans()))
    parent_channel = client._channel
    client._lock.acquire()  # as if the exporter thread was mid-export at the fork
    client._after_fork_in_child()
    assert client._channel is None
    assert client._lock.acquire(timeout=1)
    client._lock.release()
    assert client.post(encode_spans(_spans()))
    assert client._channel is not None and client._channel is not parent_channel
    parent_channel.close()
    assert len(receiver.raw_requests("traces")) == 2
    client.close()


@contextlib.contextmanager
def _grpc_server(export: Callable[[bytes, grpc.ServicerContext], bytes]) -> Iterator[str]:
    """A real gRPC server whose trace Export method is ``export``; yields its endpoint."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service = TRACES_METHOD.strip("/").rpartition("/")[0]
    handler = grpc.unary_unary_rpc_method_handler(export)  # raw bytes in and out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize("seconds", [0, -5])
def test_a_zero_or_negative_retry_delay_cannot_start_a_retry_storm(seconds: int) -> None:
    """RESOURCE_EXHAUSTED asking for a 0 s delay is retried no faster than the 0.1 s floor
    (a negative one is ignored: our backoff): a handful of calls in a 1 s timeout, not 64."""
    from google.protobuf.duration_pb2 import Duration
    from google.rpc.error_details_pb2 import RetryInfo

    calls: list[float] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(time.monotonic())
        info = RetryInfo(retry_delay=Duration(seconds=seconds)).SerializeToString()
        context.set_trailing_metadata((("google.rpc.retryinfo-bin", info),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "memory limiter")

    with _grpc_server(export) as endpoint:
        client = OTLPGrpcClient(endpoint, TRACES_METHOD, timeout=1.0)
        assert client.post(encode_spans(_spans())) is False
        client.close()
    assert 1 <= len(calls) <= 11  # 0.1 s apart at the least over 1 s


def test_credentials_in_the_endpoint_are_sent_as_basic_auth_and_never_logged(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """``http://user:pass@host:4317``: the channel goes to host:4317 and the calls carry
    Basic ``authorization`` metadata (unless configured); no log line or URL shows the
    password."""
    endpoint = receiver.grpc_endpoint.replace("http://", "http://collector-user:s3cr%40t@")
    client = OTLPGrpcClient(endpoint, TRACES_METHOD, timeout=5.0)
    assert client.post(encode_spans(_spans())) is True
    assert client.url == endpoint.replace("s3cr%40t", "***") + TRACES_METHOD
    configured = OTLPGrpcClient(
        endpoint, TRACES_METHOD, timeout=5.0, headers={"Authorization": "Bearer t"}
    )
    assert configured.post(encode_spans(_spans())) is True
    first, second = receiver.raw_requests("traces")
    assert first.headers["authorization"] == "Basic " + base64.b64encode(
        b"collector-user:s3cr@t"
    ).decode("ascii")
    assert second.headers["authorization"] == "Bearer t"
    client.close()
    configured.close()
    port = free_port()
    refused = OTLPGrpcClient(
        f"http://collector-user:s3cr3t@127.0.0.1:{port}", TRACES_METHOD, timeout=0.2
    )
    with caplog.at_level(logging.WARNING, logger="kiki_otel._export"):
        assert refused.post(b"") is False
    refused.close()
    assert f"collector-user:***@127.0.0.1:{port}{TRACES_METHOD} failed" in caplog.text
    assert "s3cr" not in caplog.text


def test_close_aborts_a_hung_export(receiver: OTLPReceiver) -> None:
    """close() (exporter shutdown) does not wait out an export stuck on a hung collector."""
    receiver.mode = "hang"
    client = OTLPGrpcClient(receiver.grpc_endpoint, TRACES_METHOD, timeout=60.0)
    results: list[bool] = []
    export = threading.Thread(target=lambda: results.append(client.post(b"")))
    export.start()
    receiver.wait_for_requests(1)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2.0  # allowed: generous bound on "at once"
    export.join(timeout=5.0)
    assert results == [False]
    receiver.mode = "ok"
