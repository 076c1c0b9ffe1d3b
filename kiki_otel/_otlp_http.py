"""A lean OTLP exporter for spans and log records (``KIKI_OTEL_EXPORTER=fast``).

Also its OTLP/HTTP transport; the gRPC one is :mod:`kiki_otel._otlp_grpc`. It plugs into
the SDK's own ``BatchSpanProcessor`` / ``BatchLogRecordProcessor`` (queueing, batching,
fork handling and shutdown stay the SDK's), and replaces what was slow per batch:
encoding goes through :mod:`kiki_otel._otlp_encode` (the official bytes, ~5x faster), and
the POST goes over one keep-alive ``http.client`` connection instead of ``requests``.

Behaviour follows the OTLP/HTTP spec and the official exporter: ``application/x-protobuf``,
optional gzip, the configured headers, retry on 429, 502, 503, 504 and connection errors
(after the ``Retry-After`` delay when the collector sends one, else exponential backoff with
jitter) until the export timeout, then the batch is dropped (and that is logged at most once
per failure streak). Shutdown interrupts a backoff, or an attempt in flight, at once.

Unlike plain ``http.client``, the export timeout bounds the whole attempt (every read gets
only the time left, so a collector trickling its answer cannot hold the exporter thread),
and a kept-alive connection the collector closed while idle is replaced at once.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk._logs import Logger as SDKLogger
from opentelemetry.sdk._logs import (
    LoggerProvider,
    ReadableLogRecord,
    SynchronousMultiLogRecordProcessor,
)
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext

from ._context import IDS_BY_NAME, current_span_context, ids_of
from ._native import new_tuple, plain_fields, speedups
from ._otlp_client import Attempt, RetryingClient, basic_auth, export_logger, redact
from ._otlp_encode import Encoded, encode_log, encode_log_event, encode_logs, encode_spans
from ._ratelimit import Throttle

__all__ = [
    "DirectLogs",
    "FastLogExporter",
    "FastSpanExporter",
    "OTLPHttpClient",
    "direct_logs",
    "enqueue",
    "has_queue",
    "queue_item",
]

_logger = export_logger
_RETRYABLE = frozenset({429, 502, 503, 504})
_USER_AGENT = "kiki-otel OTLP/HTTP exporter"
_MAX_BODY = 64 * 1024
"""The most of an answer's body read: it only feeds a failure reason (or partial success)."""
_STALE = (ConnectionError, ssl.SSLEOFError)
"""How a kept-alive connection the collector (or a proxy) closed while idle fails: on
sending, or with no answer at all (``RemoteDisconnected``)."""


class _DeadlineReader(io.RawIOBase):
    """A response's socket reads, each given only the time left before the deadline.

    ``http.client``'s socket timeout applies to each ``recv()``: a collector sending its
    answer a byte at a time would hold an export far beyond the export timeout.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("export timeout while reading the answer")
        self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # the socket's makefile() reference: lets the socket close
        super().close()


class OTLPHttpClient(RetryingClient):
    """POSTs protobuf bodies to one OTLP/HTTP URL over a reused connection."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        compression: str = "none",
    ) -> None:
        super().__init__(timeout)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP/HTTP endpoint must be an http(s) URL, got {redact(url)!r}")
        self.url = redact(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._gzip = compression == "gzip"
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": _USER_AGENT,
            **(headers or {}),
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        authorization = basic_auth(url, self._headers)
        if authorization is not None:
            self._headers["Authorization"] = authorization
        self._conn: http.client.HTTPConnection | None = None
        self._deadline = 0.0  # the attempt in flight's, for its response's reads

    def _forget_inherited(self) -> None:
        """Close only our copy of the socket: the parent's stays open (no TLS close_notify)."""
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                os.close(self._conn.sock.detach())
        self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        """The kept-alive connection (or a new one), with the time left as its timeout."""
        timeout = max(self._deadline - time.monotonic(), 0.001)
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn.response_class = self._response  # type: ignore[assignment]  # a factory
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def _response(self, sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        """``http.client``'s response, reading through a :class:`_DeadlineReader`."""
        response = http.client.HTTPResponse(sock, *args, **kwargs)
        raw = response.fp.detach()  # nothing read yet; the discarded buffer must not close it
        response.fp = io.BufferedReader(_DeadlineReader(raw, sock, self._deadline))
        return response

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _interrupt(self) -> None:
        """Shut the socket down under an attempt in flight: its send or read fails at once."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _send(self, body: bytes) -> http.client.HTTPResponse:
        """Send the request and read the answer's status line and headers."""
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=self._headers)
            return conn.getresponse()
        except BaseException:
            self._drop_connection()
            raise

    def _post_once(self, body: bytes, timeout: float) -> tuple[int, bytes, str | None]:
        self._deadline = time.monotonic() + timeout
        reused = self._conn is not None and self._conn.sock is not None
        try:
            response = self._send(body)
        except _STALE:
            if not reused or self._closed.is_set():
                raise
            # The collector closed the kept-alive connection while it was idle (no answer
            # came): once more on a new connection at once, as urllib3 does, not a failed
            # attempt's backoff.
            response = self._send(body)
        try:
            data = response.read(_MAX_BODY)
        except BaseException:
            self._drop_connection()
            raise
        if response.will_close or not response.isclosed():  # closing, or a body left unread
            self._drop_connection()
        return response.status, data, response.getheader("Retry-After")

    def post(self, body: bytes) -> bool:
        """Send one request, retrying transient failures until the timeout; True on 2xx."""
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        return super().post(body)

    def _attempt(self, body: bytes, timeout: float) -> Attempt:
        try:
            status, data, retry_after = self._post_once(body, timeout)
        except (OSError, http.client.HTTPException) as error:
            return False, True, f"{type(error).__name__}: {error}", None
        if 200 <= status < 300:
            return True, False, "", None
        reason = f"HTTP {status}: {data[:200]!r}"
        return False, status in _RETRYABLE, reason, _seconds(retry_after)

    def _release(self) -> None:
        self._drop_connection()


def _seconds(retry_after: str | None) -> float | None:
    """``Retry-After`` in seconds (its delta-seconds form; an HTTP date is ignored).

    Anything but a finite, non-negative number (``-5``, ``nan``, ``inf``) is ignored too,
    so our own backoff applies rather than an immediate retry.
    """
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class _Exporter:
    def __init__(
        self, client: RetryingClient, encode: Callable[[Sequence[Any]], bytes], signal: str
    ) -> None:
        self._client = client
        self._encode = encode
        self._signal = signal  # what lost_items() counts its items under

    def _export(self, batch: Sequence[Any]) -> bool:
        if not batch:
            return True
        sent: Sequence[Any] = batch
        try:
            body = self._encode(batch)
        except Exception:  # one bad item must not cost the others: find it, drop only it
            sent = [item for item in batch if self._encodes(item)]
            _logger.error(
                "OTLP encoding failed for %d of %d items, dropped",
                len(batch) - len(sent),
                len(batch),
            )
            _count(_lost, self._signal, len(batch) - len(sent))
            if not sent:
                return False
            body = self._encode(sent)
        delivered = self._client.post(body)
        if not delivered:
            _count(_lost, self._signal, len(sent))
        return delivered

    def _encodes(self, item: Any) -> bool:
        try:
            self._encode([item])
        except Exception:
            _logger.exception("OTLP encoding failed")
            return False
        return True

    def shutdown(self) -> None:
        self._client.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing buffered here: the batch processor holds the queue


class FastSpanExporter(_Exporter, SpanExporter):
    """Spans over OTLP (HTTP or gRPC, by the client) with the direct wire encoder."""

    def __init__(self, client: RetryingClient) -> None:
        super().__init__(client, encode_spans, "Span")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode and send one batch (called by the batch processor's worker thread)."""
        return SpanExportResult.SUCCESS if self._export(spans) else SpanExportResult.FAILURE


class FastLogExporter(_Exporter, LogRecordExporter):
    """Log records over OTLP (HTTP or gRPC, by the client) with the direct wire encoder."""

    def __init__(self, client: RetryingClient) -> None:
        super().__init__(client, encode_logs, "Log")

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Encode and send one batch (called by the batch processor's worker thread)."""
        ok = self._export(batch)
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


def _no_logger_metrics() -> type | None:
    """The SDK's logger metrics class when they are off, if it is where it was."""
    try:
        from opentelemetry.sdk._logs._internal._logger_metrics import NoOpLoggerMetrics
    except ImportError:  # pragma: no cover - another SDK shape: emit_log is always called
        return None
    return NoOpLoggerMetrics


_NO_LOGGER_METRICS = _no_logger_metrics()


class DirectLogs:
    """Log records for one SDK logger, straight into the fast exporter's batch queue.

    The SDK's ``Logger.emit`` builds a ``LogRecord``, a ``ReadWriteLogRecord`` (re-cleaning
    the attributes into ``BoundedAttributes``), then ``BatchLogRecordProcessor`` copies it
    into a ``ReadableLogRecord``: ~20 us a record. When the provider's only processor is
    that batch processor feeding our :class:`FastLogExporter`, the record it would produce
    is fully known, so :meth:`emit` encodes that record (timestamps, severity, body,
    attributes, trace/span ids and flags of the current span, the logger's resource and
    scope) and queues it, already in wire form (:class:`~._otlp_encode.Encoded`), in the
    same queue. Queueing, batching, fork handling, flush and shutdown stay the SDK's
    batch processor's.

    :meth:`usable` is checked per record: a processor added later, a logger disabled by
    the SDK's configurator, or attributes the SDK would trim (over the count limit) send
    the record the SDK way instead.
    """

    __slots__ = ("_batch", "_limit", "_logger", "_metrics", "_multi", "_processors", "queue")

    def __init__(
        self,
        logger: SDKLogger,
        multi: SynchronousMultiLogRecordProcessor,
        batch: BatchLogRecordProcessor,
        limit: int | None,
    ) -> None:
        self._logger = logger
        self._multi = multi
        self._processors = multi._log_record_processors
        self._batch: Any = batch._batch_processor  # its queue takes any record object
        metrics = logger._logger_metrics  # the SDK's, when on; off (the default) is a no-op
        self._metrics = None if type(metrics) is _NO_LOGGER_METRICS else metrics
        self._limit = limit
        native = getattr(speedups, "logs_queue", None)
        # emit_encoded in C when built (its twin); through it the C access line also checks
        # usable() without a call
        self.queue: Callable[[bytes], None] = (
            native(
                self.emit_encoded,
                multi,
                self._processors,
                logger,
                limit,
                self._metrics,
                self._batch,
                Encoded,
                enqueue,
                plain_fields(multi, ("_log_record_processors",)),
                plain_fields(logger, ("_logger_config", "_resource", "_instrumentation_scope")),
                plain_fields(self._batch, _QUEUE_READ),
            )
            if native is not None
            else self.emit_encoded
        )

    def usable(self, attribute_count: int) -> bool:
        """True when :meth:`emit` gives exactly what the SDK's ``Logger.emit`` would."""
        return (
            self._multi._log_record_processors is self._processors
            and self._logger._logger_config.is_enabled
            and (self._limit is None or attribute_count <= self._limit)
        )

    def emit(
        self, timestamp: int, severity: Any, text: str, body: str, attributes: dict[str, Any]
    ) -> None:
        """Queue one record; ``attributes`` must hold valid values under non-empty str keys."""
        fields = (timestamp, severity, text, body, attributes)
        if not self._queue(current_span_context(), encode_log, fields):
            self._logger.emit(  # our encoder failed: the record still goes, the SDK's way
                timestamp=timestamp,
                severity_number=severity,
                severity_text=text,
                body=body,
                attributes=attributes,
            )

    def emit_event(
        self,
        timestamp: int,
        severity: Any,
        text: str,
        body: str,
        event: Mapping[Any, Any],
        skip: frozenset[str],
        span_context: SpanContext | None = None,
    ) -> bool:
        """Queue the record whose attributes are ``event``'s fields but ``skip``.

        Encoded straight from the event; False (nothing queued) when a field needs
        converting first. ``span_context``: the current span's, when the caller holds it.
        """
        if span_context is None:
            span_context = current_span_context()
        fields = (timestamp, severity, text, body, event, skip)
        return self._queue(span_context, encode_log_event, fields)

    def emit_encoded(self, payload: bytes) -> None:
        """Queue a record its caller encoded for this logger (``native_log_event``'s)."""
        if self._metrics is not None:
            self._metrics.emit_log()
        logger = self._logger
        item = new_tuple(Encoded, payload, logger._resource, logger._instrumentation_scope)
        if not queue_item(self._batch, item):
            enqueue(self._batch, item)

    def _queue(
        self, span_context: SpanContext, encode: Callable[..., Any], fields: tuple[Any, ...]
    ) -> bool:
        """Encode the record and queue it; False when nothing was queued.

        The span context's ids and the logger's resource and scope go after ``fields``
        (a tuple, not ``*fields``: a log line's record comes here once per line).
        """
        logger = self._logger
        try:
            trace_id, span_id, flags, _ = ids_of(type(span_context), IDS_BY_NAME)(span_context)
            item = encode(
                *fields,
                trace_id,
                span_id,
                flags,
                logger._resource,
                logger._instrumentation_scope,
            )
        except Exception:  # a bug in our encoder must not cost the record
            _logger.exception("kiki_otel: could not encode a log record directly")
            return False
        if item is None:
            return False
        if self._metrics is not None:
            self._metrics.emit_log()
        if not queue_item(self._batch, item):
            enqueue(self._batch, item)
        return True


_QUEUE_FIELDS = (
    "_queue",
    "_max_queue_size",
    "_max_export_batch_size",
    "_worker_awaken",
    "_metrics",
    "_shutdown",
    "_pid",
    "_exporting",
)
"""What :func:`enqueue` reads of the SDK's batch processor; without one, no direct path."""
_QUEUE_READ = (
    "_shutdown",
    "_pid",
    "_queue",
    "_max_queue_size",
    "_max_export_batch_size",
    "_worker_awaken",
)
"""What ``_speedups.queue_item`` reads of it per item (from its ``__dict__`` when held)."""
_queue_full = Throttle(30.0)
"""Items dropped from a full export queue, reported per signal every 30 s."""


def has_queue(batch: object) -> bool:
    """True when ``batch`` (the SDK's batch processor) has what :func:`enqueue` reads."""
    return all(hasattr(batch, name) for name in _QUEUE_FIELDS)


def enqueue(batch: Any, item: Any) -> None:
    """``batch.emit(item)``, minus its frame and its per-item warning when full.

    The SDK builds a warning ``LogRecord`` for every dropped item (its ``DuplicateFilter``
    discards it afterwards): ~15 us each on the request thread, while the collector is down
    or slow, and it reports only the first signal's drops. Here the same drop (the oldest
    item goes, the SDK's drop metric counts it) is reported per signal every 30 s with the
    count. After shutdown an item is dropped as the SDK drops it, without its "Shutdown
    called, ignoring" line: uvicorn's own last lines come after kiki's shutdown, so every
    graceful stop printed one (the lines themselves are on stdout). In a forked child whose
    processor the SDK has not reset yet, the SDK's own ``emit`` resets it. The pid is read
    per item, as ``emit`` reads it: a process forked without Python's at-fork hooks (a C
    extension's ``fork()``) has the parent's queue and no worker thread, and a pid cached
    and refreshed by those hooks would have queued into it for good.
    """
    if batch._shutdown:
        return
    if batch._pid != os.getpid():
        batch.emit(item)
        return
    queue = batch._queue
    if len(queue) >= batch._max_queue_size:
        batch._metrics.drop_items(1)
        queue.appendleft(item)  # a deque at its maxlen: the oldest falls off, as in emit()
        _report_full(str(batch._exporting))
        return
    queue.appendleft(item)  # what the SDK's emit does with an item that fits
    if len(queue) >= batch._max_export_batch_size and not batch._worker_awaken.is_set():
        batch._worker_awaken.set()


def _not_queued(_batch: Any, _item: Any) -> bool:
    return False


queue_item: Callable[[Any, Any], bool] = getattr(speedups, "queue_item", None) or _not_queued
"""``if not queue_item(batch, item): enqueue(batch, item)``: :func:`enqueue`'s common case in C
(the item fits, the queue is this process's), its frame and ~40 bytecodes fewer; False
when it did nothing (or without the C module), and :func:`enqueue` runs."""


_dropped: dict[str, int] = {}
"""Items the direct paths dropped from a full export queue, per signal, in this process."""
_lost: dict[str, int] = {}
"""Items kiki's exporters could not deliver (the collector unreachable, refusing or too
slow for the export timeout; an item that would not encode), per signal, in this process."""
_dropped_lock = threading.Lock()


def _count(counts: dict[str, int], signal: str, items: int) -> int:
    with _dropped_lock:  # only on a drop or a failed export, never for an item that goes out
        total = counts[signal] = counts.get(signal, 0) + items
    return total


def dropped_items() -> dict[str, int]:
    """How many items :func:`enqueue` dropped so far, per signal ("Span", "Log")."""
    with _dropped_lock:
        return dict(_dropped)


def lost_items() -> dict[str, int]:
    """How many items kiki's exporters failed to deliver so far, per signal ("Span", "Log")."""
    with _dropped_lock:
        return dict(_lost)


def _report_full(signal: str) -> None:
    total = _count(_dropped, signal, 1)
    if _queue_full.due(signal) is not None:
        _logger.warning(
            "OTLP export queue full: dropping %s items, %d so far "
            "(the collector takes them slower than they come)",
            signal,
            total,
        )


def direct_logs(provider: object, logger: object) -> DirectLogs | None:
    """A :class:`DirectLogs` for ``logger`` when it can be used for it, else None.

    Only for an SDK ``LoggerProvider`` whose single processor is a plain
    ``BatchLogRecordProcessor`` over a :class:`FastLogExporter`, with no attribute value
    length limit (values would need truncating) - anything else keeps the SDK path.
    """
    try:
        return _direct_logs(provider, logger)
    except AttributeError:  # SDK internals renamed in a newer release: keep the SDK path
        return None


def _direct_logs(provider: object, logger: object) -> DirectLogs | None:
    if type(provider) is not LoggerProvider or type(logger) is not SDKLogger:
        return None
    multi = provider._multi_log_record_processor
    if type(multi) is not SynchronousMultiLogRecordProcessor:
        return None
    processors = multi._log_record_processors
    if len(processors) != 1 or type(processors[0]) is not BatchLogRecordProcessor:
        return None
    batch = processors[0]
    if not isinstance(getattr(batch._batch_processor, "_exporter", None), FastLogExporter):
        return None
    if not has_queue(batch._batch_processor):
        return None
    limits = logger._log_record_limits
    if limits.max_log_record_attribute_length is not None:
        return None
    return DirectLogs(logger, multi, batch, limits.max_log_record_attributes)
