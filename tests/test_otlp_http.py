"""The fast OTLP/HTTP exporter against the real OTLP receiver, and how it is selected.

The receiver decodes with opentelemetry-proto, so these prove the wire format end to end
(plain and gzip), the failure behaviour (error, hung, refused collector: a bounded wait,
then the batch is dropped) and that ``KIKI_OTEL_EXPORTER=official`` keeps the official path.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from kiki_otel._exporters import log_exporter, span_exporter
from kiki_otel._logging import OTelEmitter
from kiki_otel._otlp_encode import encode_log_event, encode_logs, encode_spans
from kiki_otel._otlp_http import FastLogExporter, FastSpanExporter, OTLPHttpClient, direct_logs
from kiki_otel._settings import Settings
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import free_port
from tests.test_otlp_encode import RESOURCE, _logs, _spans


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
    assert time.monotonic() - started < 4.0  # allowed: the timeout is the behaviour


def test_hung_collector_is_bounded_by_the_timeout(receiver: OTLPReceiver) -> None:
    """A collector that never answers costs at most the export timeout."""
    receiver.mode = "hang"
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces"), timeout=0.5))
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3.0  # allowed: the timeout is the behaviour


def test_refused_collector_fails_within_the_timeout_and_shutdown_interrupts() -> None:
    """Connection refused is retried with backoff only until the timeout; shutdown stops it."""
    client = OTLPHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1.0)
    exporter = FastSpanExporter(client)
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.5  # allowed: the timeout is the behaviour
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


def _emitter_setup(
    receiver: OTLPReceiver, processor: type[BatchLogRecordProcessor] = BatchLogRecordProcessor
) -> tuple[LoggerProvider, OTelEmitter]:
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    exporter = FastLogExporter(OTLPHttpClient(receiver.http_url("logs")))
    provider.add_log_record_processor(processor(exporter))
    return provider, OTelEmitter(provider)


class _UserBatchProcessor(BatchLogRecordProcessor):
    """A subclass: not provably the SDK's plain batch processor, so the SDK path is kept."""


def _event() -> dict[str, Any]:
    return {
        "event": "http.request",
        "level": "error",
        "logger": "kiki_otel.access",
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "trace_id": "ignored: the record's own field",
        "service": "svc",
        "status": 500,
        "duration_ms": 1.25,
        "route": None,
        "ok": False,
        "tags": ["a", "b"],
        "extra": {"nested": [1, 2]},
        "exception": {"type": "ValueError", "message": "boom", "stacktrace": "Traceback..."},
    }


def _plain_event() -> dict[str, Any]:
    """An access line's fields: every value a plain attribute, so no converting."""
    return {
        "method": "GET",
        "path": "/items/7",
        "route": "/items/{item_id}",
        "status": 200,
        "duration_ms": 0.25,
        "cached": False,
        "parent": None,
        "event": "plain",
        "logger": "kiki_otel.access",
        "level": "info",
        "timestamp": "2026-01-01T00:00:00Z",
        "request_id": "0af7651916cd43dd8448eb211c80319c",
    }


def test_direct_log_path_matches_the_sdk_path_on_the_wire(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emitter's direct path into the fast exporter's queue delivers the same record as
    the SDK's ``Logger.emit`` path: body, severity, attributes, trace/span ids, flags,
    resource and scope (only the timestamps differ, being taken at different times). Plain
    events are encoded straight from the event dict, others after converting their fields."""
    from kiki_otel import _otlp_http

    encoded_from_event: list[str] = []

    def spy(*args: Any) -> Any:
        item = encode_log_event(*args)
        if item is not None:
            encoded_from_event.append(args[3])
        return item

    monkeypatch.setattr(_otlp_http, "encode_log_event", spy)
    tracer = TracerProvider(resource=RESOURCE).get_tracer("t")
    got = {}
    for label, processor in (("direct", BatchLogRecordProcessor), ("sdk", _UserBatchProcessor)):
        provider, emitter = _emitter_setup(receiver, processor)
        with tracer.start_as_current_span("request") as span:
            emitter(None, "error", _event())
            ids = (
                f"{span.get_span_context().trace_id:032x}",
                f"{span.get_span_context().span_id:016x}",
            )
            emitter(None, "info", _plain_event())  # encoded straight from the event
        emitter(None, "info", {"event": "outside", "level": "info", "logger": "kiki_otel.x"})
        uses_direct = emitter._loggers["kiki_otel.access"][1] is not None
        assert uses_direct is (label == "direct")
        provider.force_flush()
        records = receiver.wait_for_logs(3)
        receiver.clear()
        in_span = next(r for r in records if r.body == "http.request")
        plain = next(r for r in records if r.body == "plain")
        outside = next(r for r in records if r.body == "outside")
        assert (in_span.trace_id, in_span.span_id) == ids
        assert in_span.flags & 1  # sampled (the SDK may also set W3C's random bit)
        assert (outside.trace_id, outside.span_id, outside.flags) == ("", "", 0)
        assert in_span.time_unix_nano > 0 and in_span.observed_time_unix_nano > 0
        got[label] = [
            (
                r.trace_id != "",
                r.severity_number,
                r.severity_text,
                r.body,
                r.attributes,
                r.event_name,
                r.flags,
                r.resource,
                r.scope_name,
            )
            for r in (in_span, plain, outside)
        ]
        provider.shutdown()
    assert got["direct"] == got["sdk"]
    assert encoded_from_event == ["plain", "outside"]  # the "direct" round; _event() converts
    attributes = got["direct"][0][4]
    assert attributes["exception.type"] == "ValueError"
    assert attributes["route"] is None and attributes["tags"] == ["a", "b"]
    assert attributes["extra"] == '{"nested":[1,2]}'
    assert "trace_id" not in attributes and "event" not in attributes
    assert got["direct"][0][1:3] == (17, "ERROR")
    assert got["direct"][0][8] == "kiki_otel.access"
    assert got["direct"][1][4] == {
        k: v for k, v in _plain_event().items() if k not in ("event", "level", "timestamp")
    }


@pytest.mark.filterwarnings("ignore::opentelemetry.sdk._logs.LogRecordDroppedAttributesWarning")
def test_direct_log_path_steps_aside_for_user_processors_and_limits(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor added after the first record, a key the SDK would drop, or more
    attributes than the count limit: those records take the SDK path (and reach every
    processor), so nothing a user configured is bypassed."""
    provider, emitter = _emitter_setup(receiver)
    queue = provider._multi_log_record_processor._log_record_processors[0]._batch_processor._queue
    emitter(None, "info", {"event": "first", "level": "info", "logger": "app"})
    assert type(queue[0]).__name__ == "Encoded"
    emitter(None, "info", {"event": "bad key", "level": "info", "logger": "app", "": 1})
    assert type(queue[0]).__name__ == "ReadableLogRecord"
    many = {f"k{i}": i for i in range(200)}
    emitter(None, "info", {"event": "many", "level": "info", "logger": "app", **many})
    assert type(queue[0]).__name__ == "ReadableLogRecord"
    assert queue[0].dropped_attributes > 0
    memory = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    emitter(None, "info", {"event": "after", "level": "info", "logger": "app"})
    assert type(queue[0]).__name__ == "ReadableLogRecord"
    assert [r.log_record.body for r in memory.get_finished_logs()] == ["after"]
    provider.force_flush()
    assert {str(r.body) for r in receiver.wait_for_logs(4)} == {"first", "bad key", "many", "after"}
    provider.shutdown()


def test_direct_log_path_only_for_a_plain_batch_over_the_fast_exporter() -> None:
    """The official exporter, a simple processor, or a value length limit: no direct path."""
    client = OTLPHttpClient("http://127.0.0.1:9/v1/logs")
    cases: list[tuple[LoggerProvider, bool]] = []
    plain = LoggerProvider(shutdown_on_exit=False)
    plain.add_log_record_processor(BatchLogRecordProcessor(FastLogExporter(client)))
    cases.append((plain, True))
    official = LoggerProvider(shutdown_on_exit=False)
    official.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint="http://127.0.0.1:9/v1/logs"))
    )
    cases.append((official, False))
    simple = LoggerProvider(shutdown_on_exit=False)
    simple.add_log_record_processor(SimpleLogRecordProcessor(FastLogExporter(client)))
    cases.append((simple, False))
    limited = LoggerProvider(
        shutdown_on_exit=False,
        log_record_limits=LogRecordLimits(max_log_record_attribute_length=10),
    )
    limited.add_log_record_processor(BatchLogRecordProcessor(FastLogExporter(client)))
    cases.append((limited, False))
    for provider, expected in cases:
        assert (direct_logs(provider, provider.get_logger("x")) is not None) is expected
        provider.shutdown()


def test_an_encoder_failure_costs_no_log_record(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If encoding a record directly ever failed, it goes the SDK's way instead."""
    from kiki_otel import _otlp_http

    def broken(*args: Any) -> Any:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(_otlp_http, "encode_log_event", broken)  # the plain-event path
    monkeypatch.setattr(_otlp_http, "encode_log", broken)  # then the converted-fields one
    provider, emitter = _emitter_setup(receiver)
    emitter(None, "info", {"event": "kept", "level": "info", "logger": "app", "n": 1})
    provider.force_flush()
    (record,) = receiver.wait_for_logs(1)
    assert (str(record.body), record.attributes["n"]) == ("kept", 1)
    provider.shutdown()


def test_the_collectors_retry_after_is_honoured() -> None:
    """429 with ``Retry-After: 0.2`` (a collector shedding load): the retry waits what it
    asked for, not our 1 s first backoff; an HTTP-date value falls back to our backoff."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kiki_otel._otlp_http import _seconds

    calls: list[float] = []

    class Shedding(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(time.monotonic())
            self.send_response(429 if len(calls) == 1 else 200)
            if len(calls) == 1:
                self.send_header("Retry-After", "0.2")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Shedding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        client = OTLPHttpClient(url, timeout=5.0)
        assert client.post(encode_spans(_spans())) is True
        assert len(calls) == 2
        assert 0.15 < calls[1] - calls[0] < 0.75  # allowed: the asked delay (ours: 0.8-1.2 s)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert (_seconds("3"), _seconds(" 0.5 "), _seconds("0")) == (3.0, 0.5, 0.0)
    assert _seconds("Wed, 21 Oct 2026 07:28:00 GMT") is None and _seconds(None) is None
    assert [_seconds(bad) for bad in ("-1", "nan", "inf", "1e309")] == [None] * 4


def test_a_forked_worker_gets_its_own_connection_and_lock(receiver: OTLPReceiver) -> None:
    """The after-fork hook (shared with the gRPC client) drops the parent's keep-alive
    connection and makes a new lock; the next export connects again. The real fork is
    tests/integration/test_prefork.py."""
    client = OTLPHttpClient(receiver.http_url("traces"), timeout=5.0)
    assert client.post(encode_spans(_spans()))
    assert client._conn is not None
    client._lock.acquire()  # as if the exporter thread was mid-export at the fork
    client._after_fork_in_child()
    assert client._conn is None
    assert client._lock.acquire(timeout=1)
    client._lock.release()
    assert client.post(encode_spans(_spans()))
    assert len(receiver.raw_requests("traces")) == 2
    client.close()


def test_one_bad_item_costs_only_itself(receiver: OTLPReceiver) -> None:
    """A record with a lone surrogate (a JSON body's "\\ud800") is encoded with the
    character escaped; an item the encoder cannot take at all is dropped alone, and the
    rest of its batch still arrives."""
    provider, emitter = _emitter_setup(receiver)
    emitter(None, "info", {"event": "before", "level": "info", "logger": "app"})
    emitter(None, "info", {"event": "bad \ud800", "level": "info", "logger": "app", "n": "\ud800"})
    emitter(None, "info", {"event": "after", "level": "info", "logger": "app"})
    provider.force_flush()
    got = {str(r.body): r for r in receiver.wait_for_logs(3)}
    assert set(got) == {"before", "bad \\ud800", "after"}
    assert got["bad \\ud800"].attributes["n"] == "\\ud800"
    provider.shutdown()
    spans = _spans()
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces")))
    batch: list[Any] = [spans[0], object(), spans[1]]  # object(): no span fields at all
    assert exporter.export(batch) is SpanExportResult.SUCCESS
    assert {s.name for s in receiver.wait_for_spans(2)} == {spans[0].name, spans[1].name}
    assert receiver.raw_requests("traces")[0].body == encode_spans([spans[0], spans[1]])
    exporter.shutdown()


@contextlib.contextmanager
def _http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering with ``handler``; yields its traces URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a handler still trickling must not block the teardown
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def test_a_connection_the_collector_closed_while_idle_is_replaced_at_once() -> None:
    """Collectors and load balancers close idle keep-alive connections: the next export
    fails on the dead socket before any answer and goes again at once on a new connection,
    not after a failed attempt's 1 s backoff (which a 0.5 s export timeout cannot afford)."""
    hits: list[float] = []

    class IdleClosing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.2  # the server's idle keep-alive timeout

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with _http_server(IdleClosing) as url:
        client = OTLPHttpClient(url, timeout=0.5)
        assert client.post(b"") is True
        time.sleep(0.5)  # the server drops the idle connection
        assert client.post(b"") is True
        assert client.post(b"") is True  # and the new connection is kept alive
        client.close()
    assert len(hits) == 3


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_logged(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """``http://user:pass@host`` (percent-encoded) authenticates with Basic auth, as the
    official exporter does, unless an Authorization header is configured; the password
    appears in no log line, URL or error message."""
    url = receiver.http_url("traces").replace("http://", "http://collector-user:s3cr%40t@")
    client = OTLPHttpClient(url, timeout=5.0)
    assert client.post(encode_spans(_spans())) is True
    assert client.url == url.replace("s3cr%40t", "***")
    configured = OTLPHttpClient(url, timeout=5.0, headers={"authorization": "Bearer t"})
    assert configured.post(encode_spans(_spans())) is True
    first, second = receiver.raw_requests("traces")
    assert first.headers["authorization"] == "Basic " + base64.b64encode(
        b"collector-user:s3cr@t"
    ).decode("ascii")
    assert second.headers["authorization"] == "Bearer t"
    client.close()
    configured.close()
    port = free_port()
    refused = OTLPHttpClient(f"http://collector-user:s3cr3t@127.0.0.1:{port}/v", timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="kiki_otel._export"):
        assert refused.post(b"") is False
    assert f"collector-user:***@127.0.0.1:{port}/v failed" in caplog.text
    assert "s3cr" not in caplog.text
    with pytest.raises(ValueError, match="http") as error:
        OTLPHttpClient("ftp://collector-user:s3cr3t@host/v1/traces")
    assert "s3cr" not in str(error.value)


def test_a_trickling_collector_costs_at_most_the_timeout_and_close_interrupts() -> None:
    """A collector sending its answer a byte at a time (each read well within the socket
    timeout) is cut off at the export timeout, not when it finishes; and close() does not
    wait for an export stuck on one: it aborts it."""
    stop = threading.Event()

    class Trickling(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20:
                if stop.wait(0.3):
                    return
                try:
                    self.wfile.write(bytes([byte]))
                except OSError:  # the client gave up
                    return

        def log_message(self, *args: object) -> None:
            pass

    with _http_server(Trickling) as url:
        client = OTLPHttpClient(url, timeout=1.0)
        started = time.monotonic()
        assert client.post(b"") is False
        assert time.monotonic() - started < 3.0  # allowed: the timeout is the behaviour
        client.close()
        stuck = OTLPHttpClient(url, timeout=60.0)
        results: list[bool] = []
        export = threading.Thread(target=lambda: results.append(stuck.post(b"")))
        export.start()
        time.sleep(0.5)  # the export is reading the trickle
        started = time.monotonic()
        stuck.close()
        assert time.monotonic() - started < 2.0  # allowed: generous bound on "at once"
        export.join(timeout=5.0)
        assert results == [False]
        stop.set()


def test_a_huge_error_body_is_not_read_whole() -> None:
    """Only the start of an answer's body is read (it only feeds the failure reason): a
    proxy's endless error page costs neither the export timeout nor the memory."""
    stop = threading.Event()
    hits: list[int] = []

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(1)
            self.send_response(400)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(b"x" * (256 * 1024))
            stop.wait(10)  # then stalls, the rest never comes

        def log_message(self, *args: object) -> None:
            pass

    with _http_server(Endless) as url:
        client = OTLPHttpClient(url, timeout=5.0)
        started = time.monotonic()
        assert client.post(b"") is False
        assert time.monotonic() - started < 3.0  # allowed: well under the 5 s timeout
        client.close()
        stop.set()
    assert hits == [1]


@pytest.mark.parametrize("value", ["-5", "nan", "0"])
def test_a_bad_or_zero_retry_after_cannot_start_a_retry_storm(value: str) -> None:
    """An overloaded collector answering 503 with ``Retry-After`` -5, nan (ignored: our
    backoff) or 0 (honoured, but never faster than the 0.1 s floor) gets a handful of
    retries in a 1 s export timeout, not 64 in a few milliseconds."""
    hits: list[float] = []

    class Overloaded(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(time.monotonic())
            self.send_response(503)
            self.send_header("Retry-After", value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with _http_server(Overloaded) as url:
        client = OTLPHttpClient(url, timeout=1.0)
        assert client.post(b"") is False
        client.close()
    assert 1 <= len(hits) <= 11  # 0.1 s apart at the least over 1 s


def test_a_full_export_queue_drops_without_a_warning_per_item(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector that hangs fills the export queue: each further record drops the oldest,
    as the SDK's own emit does, but without the SDK building a warning per dropped item
    (~15 us each, on the request thread); the drops are reported once with their count."""
    from opentelemetry.sdk import _shared_internal

    from kiki_otel import _otlp_http

    sdk_warnings: list[str] = []
    real_warning = _shared_internal._logger.warning

    def counted(msg: str, *args: object, **kwargs: object) -> None:
        sdk_warnings.append(msg)
        real_warning(msg, *args, **kwargs)

    receiver.mode = "hang"
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    exporter = FastLogExporter(OTLPHttpClient(receiver.http_url("logs"), timeout=2.0))
    batch = BatchLogRecordProcessor(exporter, max_queue_size=8, max_export_batch_size=2)
    provider.add_log_record_processor(batch)
    emitter = OTelEmitter(provider)
    _otlp_http._queue_full.state.clear()
    before = _otlp_http.dropped_items().get("Log", 0)
    _shared_internal._logger.warning = counted  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="kiki_otel._export"):
            for i in range(40):
                emitter(None, "info", {"event": f"r{i}", "level": "info", "logger": "app"})
                time.sleep(0.001)
    finally:
        _shared_internal._logger.warning = real_warning  # type: ignore[method-assign]
    queue = batch._batch_processor._queue
    assert len(queue) == 8
    bodies = [item.payload for item in queue]  # the newest stay (appendleft: newest first)
    assert b"\x0a\x03r39" in bodies[0]
    assert not any(b"\x0a\x02r0" in body for body in bodies)  # the oldest fell off
    assert not [w for w in sdk_warnings if w.startswith("Queue full")]
    reports = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(reports) == 1 and "Log" in reports[0].getMessage()
    assert "1 so far" in reports[0].getMessage()  # reported at the first drop
    dropped = _otlp_http.dropped_items()["Log"] - before
    assert 40 - 8 - 4 <= dropped <= 40 - 8  # all but the queue and what went out before
    receiver.mode = "ok"
    provider.shutdown()


def test_lines_after_shutdown_print_no_sdk_shutdown_notice(
    receiver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn's last lines ("Application shutdown complete.") come after kiki's shutdown:
    they stay on stdout, their OTel records are dropped as the SDK drops them, and no
    "Shutdown called, ignoring Log." line is printed for each."""
    import kiki_otel

    telemetry = kiki_otel.configure(
        service_name="svc",
        exporter_otlp_endpoint=f"http://127.0.0.1:{receiver.http_port}",
        metrics_exporter="none",
    )
    assert telemetry.shutdown(5.0).clean
    capsys.readouterr()
    logging.getLogger("uvicorn.error").info("Application shutdown complete.")
    kiki_otel.get_logger("app").info("late.line")
    out = capsys.readouterr().out
    assert "Application shutdown complete." in out and "late.line" in out
    assert "Shutdown called" not in out


def _put_by(path: str) -> Any:
    """How the direct paths queue an item: ``enqueue``, or C's ``queue_item`` before it."""
    from kiki_otel import _otlp_http

    if path == "python":
        return _otlp_http.enqueue
    if _otlp_http.queue_item is _otlp_http._not_queued:
        pytest.skip("the C module is not built here")

    def put(batch: Any, item: Any) -> None:
        if not _otlp_http.queue_item(batch, item):
            _otlp_http.enqueue(batch, item)

    return put


# (3.12+ warns of a fork in a multi-threaded process: the very case, a prefork master's)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("path", ["c", "python"])
def test_direct_items_wake_the_exporter_per_batch_and_after_a_fork(
    receiver: OTLPReceiver, path: str
) -> None:
    """``enqueue`` queues as the SDK's emit does: the exporter thread is woken once a batch
    is full (no flush needed), and in a forked child the SDK's emit resets the processor
    (its inherited queue and thread) before the item goes in."""
    from kiki_otel import _otlp_http
    from kiki_otel._otlp_encode import encode_span

    put = _put_by(path)
    spans = _spans()
    provider = TracerProvider(resource=RESOURCE)
    exporter = FastSpanExporter(OTLPHttpClient(receiver.http_url("traces"), timeout=5.0))
    processor = BatchSpanProcessor(exporter, max_export_batch_size=2, schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    batch = processor._batch_processor
    assert _otlp_http.has_queue(batch)
    put(batch, encode_span(spans[0]))
    put(batch, encode_span(spans[1]))  # a full batch: exported well before 60 s
    assert {s.name for s in receiver.wait_for_spans(2, timeout=10)} == {
        spans[0].name,
        spans[1].name,
    }
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what its queue holds after one item, then leave
        os.close(read)
        put(batch, encode_span(spans[0]))
        os.write(write, f"{batch._pid == os.getpid()} {len(batch._queue)}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        assert pipe.read() == "True 1"
    os.waitpid(pid, 0)
    provider.shutdown()


_HOOKLESS_FORK = """
import ctypes, os, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from kiki_otel._otlp_encode import encode_span
from kiki_otel._otlp_http import FastSpanExporter, OTLPHttpClient, enqueue, queue_item
from tests.test_otlp_encode import _spans

url = sys.argv[1]
exporter = FastSpanExporter(OTLPHttpClient(url, timeout=5.0))
processor = BatchSpanProcessor(exporter, schedule_delay_millis=100)
TracerProvider().add_span_processor(processor)
batch = processor._batch_processor
spans = _spans()
pid = ctypes.PyDLL(None).fork()  # libc's fork: Python's at-fork hooks do not run
if pid == 0:
    for i in range(3):
        item = encode_span(spans[i % len(spans)])
        if sys.argv[2] == "python" or not queue_item(batch, item):
            enqueue(batch, item)
    time.sleep(2)  # the SDK's new worker exports within its 100 ms delay
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("path", ["c", "python"])
def test_a_child_forked_without_pythons_hooks_still_exports(
    receiver: OTLPReceiver, path: str
) -> None:
    """A C extension's fork() runs no at-fork hooks: the child has the parent's queue and
    no worker thread. Each item checks the pid as the SDK's emit does, so the SDK resets
    the processor in the child and its items arrive."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", _HOOKLESS_FORK, receiver.http_url("traces"), path],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        timeout=60,
    )
    assert len(receiver.wait_for_spans(3, timeout=10)) >= 3


def test_queue_item_does_what_enqueue_does_or_nothing() -> None:
    """``queue_item`` against ``enqueue`` on two real SDK batch processors: an item that
    fits (the worker woken at a full batch, once), one after shutdown (dropped), and the
    cases it leaves to ``enqueue`` untouched (a full queue, another process's queue)."""
    from kiki_otel import _otlp_http

    if _otlp_http.queue_item is _otlp_http._not_queued:
        pytest.skip("the C module is not built here")
    client = OTLPHttpClient("http://127.0.0.1:9/v1/traces", timeout=0.1)

    def batch() -> Any:
        processor = BatchSpanProcessor(
            FastSpanExporter(client),
            max_queue_size=4,
            max_export_batch_size=2,
            schedule_delay_millis=600_000,
        )
        inner = processor._batch_processor
        waiting.append((inner, inner._worker_awaken))
        inner._worker_awaken = _CountedEvent()  # (the worker waits: set() is only counted)
        return inner

    waiting: list[tuple[Any, Any]] = []

    c, python = batch(), batch()
    for item in ("a", "b", "c", "d"):
        assert _otlp_http.queue_item(c, item) is True
        _otlp_http.enqueue(python, item)
        assert list(c._queue) == list(python._queue)
        assert c._worker_awaken.sets == python._worker_awaken.sets
    assert list(c._queue) == ["d", "c", "b", "a"] and c._worker_awaken.sets == 1
    assert _otlp_http.queue_item(c, "e") is False  # full: enqueue's drop and report
    assert list(c._queue) == ["d", "c", "b", "a"]
    c._pid, python._pid = -1, -1  # another process's queue: the SDK's emit resets it
    assert _otlp_http.queue_item(c, "e") is False and len(c._queue) == 4
    c._shutdown = python._shutdown = True
    c._queue.clear()
    assert _otlp_http.queue_item(c, "e") is True and not c._queue
    _otlp_http.enqueue(python, "e")
    assert len(python._queue) == 4  # unchanged: dropped alike
    with pytest.raises(AttributeError):
        _otlp_http.queue_item(object(), "e")
    for inner, awaken in waiting:  # the workers end, with nothing to export
        inner._shutdown = True
        inner._queue.clear()
        awaken.set()
        inner._worker_thread.join(timeout=5)
        assert not inner._worker_thread.is_alive()


class _CountedEvent:
    def __init__(self) -> None:
        self.flag, self.sets = False, 0

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag, self.sets = True, self.sets + 1


def test_direct_paths_count_in_the_sdks_internal_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the SDK's own metrics on (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), a
    direct span and a direct record count as the SDK's paths count them; off, the direct
    paths skip the no-op calls (nothing to count)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.trace import SpanKind

    from kiki_otel._fast_span import DirectSpans

    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counts = {}
    for path in ("sdk", "direct"):
        reader = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        client = OTLPHttpClient("http://127.0.0.1:9/v1/traces", timeout=0.1)  # none listens
        tracers = TracerProvider(meter_provider=meters, shutdown_on_exit=False)
        tracers.add_span_processor(BatchSpanProcessor(FastSpanExporter(client)))
        tracer = tracers.get_tracer("t")
        logs = LoggerProvider(meter_provider=meters, shutdown_on_exit=False)
        logs.add_log_record_processor(BatchLogRecordProcessor(FastLogExporter(client)))
        logger = logs.get_logger("app")
        direct = DirectSpans.for_tracer(tracer)
        direct_log = direct_logs(logs, logger)
        assert direct is not None and direct_log is not None
        for _ in range(3):
            if path == "sdk":
                tracer.start_span("GET", kind=SpanKind.SERVER).end()
                logger.emit(body="line")
            else:
                direct.end(direct.start("GET", None, {}))  # type: ignore[arg-type]
                direct_log.emit(time.time_ns(), None, "INFO", "line", {})
        data = reader.get_metrics_data()
        assert data is not None
        counts[path] = sorted(
            (metric.name, point.value)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points  # type: ignore[union-attr]
        )
        for provider in (tracers, logs, meters):
            provider.shutdown()  # type: ignore[attr-defined]
    assert counts["direct"] == counts["sdk"]
    names = {name for name, _ in counts["sdk"]}
    assert {"otel.sdk.span.started", "otel.sdk.span.live", "otel.sdk.log.created"} <= names
    assert ("otel.sdk.span.live", 0) in counts["sdk"]
    assert ("otel.sdk.log.created", 3) in counts["sdk"]
