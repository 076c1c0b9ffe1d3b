"""A real, in-process OTLP receiver (HTTP/protobuf and gRPC) for tests and benchmarks.

It stands in for an OpenTelemetry Collector so a test can prove that telemetry really
left the process over the wire, with the exact ids, names, attributes and values the
code under test produced - not just that an in-memory exporter was called.

Why a hand-written receiver rather than a collector binary: it starts in milliseconds,
needs no network access or build step, decodes what it receives into plain dataclasses a
test can assert on, and can be told to fail (``mode="error"``) or to hang
(``mode="hang"``) at runtime, which a real collector cannot do on demand.

Typical use in a (synchronous) pytest test::

    with OTLPReceiver() as rx:
        exporter = OTLPSpanExporter(endpoint=rx.http_url("traces"))   # OTLP/HTTP
        # or: grpc OTLPSpanExporter(endpoint=rx.grpc_endpoint, insecure=True)
        ...
        [span] = rx.wait_for_spans(1, name="GET /items")
        assert span.attributes["http.response.status_code"] == 200

Command line (benchmarks, manual runs)::

    python -m tests.support.otlp_receiver --http-port 4318 --grpc-port 4317 [--discard] [--print]

It prints one JSON line with the endpoints when ready and one JSON line with the request
counts when it receives SIGINT or SIGTERM.

Both front ends hand the *undecoded* protobuf bytes to one core (``_process``), so gRPC
and HTTP behave identically, raw bytes are byte-exact for both protocols, and the
``discard`` mode can skip decoding entirely.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import signal
import socket
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, BinaryIO, Final, Literal, Self, TypeAlias, TypeVar, Union, cast, get_args

import grpc  # type: ignore[import-untyped, unused-ignore]  # grpcio ships no type information
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "AttrValue",
    "Mode",
    "OTLPReceiver",
    "Protocol",
    "RawRequest",
    "ReceivedEvent",
    "ReceivedExemplar",
    "ReceivedLink",
    "ReceivedLog",
    "ReceivedMetric",
    "ReceivedSpan",
    "Record",
    "Signal",
    "decode_any_value",
    "decode_attributes",
    "decode_request",
    "main",
]

Signal = Literal["traces", "metrics", "logs"]
Protocol = Literal["http", "grpc"]
Mode = Literal["ok", "error", "hang"]
Outcome = Literal["ok", "error", "hang", "invalid"]
MetricKind = Literal["sum", "gauge", "histogram", "exp_histogram", "summary"]

SIGNALS: Final[tuple[Signal, ...]] = get_args(Signal)
PROTOCOLS: Final[tuple[Protocol, ...]] = get_args(Protocol)
MODES: Final[tuple[Mode, ...]] = get_args(Mode)

# A decoded OTLP AnyValue. ``None`` is an AnyValue with no value set (OTLP allows it).
AttrValue: TypeAlias = Union[  # noqa: UP007  (a recursive alias needs string forward refs)
    str, bool, int, float, bytes, list["AttrValue"], dict[str, "AttrValue"], None
]

_T = TypeVar("_T")

# How often a hung request re-checks "stopped? mode changed? client gone?". Small enough
# that stop() and a mode switch take effect promptly, large enough to cost nothing.
_HANG_POLL_S: Final = 0.02
# gRPC's default 4 MiB receive limit is below what a batching exporter may send in a
# benchmark; a collector's default is unlimited-ish too.
_GRPC_MAX_MESSAGE: Final = 64 * 1024 * 1024
_PROTOBUF: Final = "application/x-protobuf"


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedEvent:
    """A span event, as the collector would see it."""

    name: str
    time_unix_nano: int
    attributes: dict[str, AttrValue]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedLink:
    """A span link: the linked context plus the link's attributes."""

    trace_id: str
    span_id: str
    attributes: dict[str, AttrValue]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedSpan:
    """One span, flattened with its resource and scope so a test needs no proto knowledge.

    ``kind`` and ``status_code`` are the enum *names* without the proto prefix ("SERVER",
    "ERROR"), which equal ``SpanKind.SERVER.name`` / ``StatusCode.ERROR.name`` of the
    Python API. Names rather than numbers because the API's and the proto's numbering
    differ (API ``SpanKind.SERVER == 1``, proto ``SPAN_KIND_SERVER == 2``).
    """

    trace_id: str  # 32 lowercase hex chars, == format(ctx.trace_id, "032x")
    span_id: str  # 16 lowercase hex chars
    parent_span_id: str  # "" for a root span
    name: str
    kind: str
    attributes: dict[str, AttrValue]
    status_code: str  # "UNSET" | "OK" | "ERROR"
    status_message: str
    events: tuple[ReceivedEvent, ...]
    links: tuple[ReceivedLink, ...]
    start_time_unix_nano: int
    end_time_unix_nano: int
    trace_state: str
    flags: int
    resource: dict[str, AttrValue]
    scope_name: str
    scope_version: str
    protocol: Protocol

    @property
    def duration_ns(self) -> int:
        """End minus start, in nanoseconds."""
        return self.end_time_unix_nano - self.start_time_unix_nano


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedLog:
    """One log record with its resource and scope; ids are hex ("" when not set)."""

    trace_id: str
    span_id: str
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    body: AttrValue
    attributes: dict[str, AttrValue]
    event_name: str
    flags: int
    resource: dict[str, AttrValue]
    scope_name: str
    protocol: Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedExemplar:
    """A metric exemplar: the value and the trace/span it was recorded in."""

    trace_id: str
    span_id: str
    time_unix_nano: int
    value: int | float | None
    attributes: dict[str, AttrValue]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedMetric:
    """One data point of one metric (a metric with N attribute sets gives N of these).

    Which fields are meaningful depends on ``kind``: ``value`` for sum and gauge;
    ``count``/``sum``/``min``/``max`` for the histograms and summary;
    ``bucket_counts``/``explicit_bounds`` for histogram; the ``exp_*`` fields for
    exp_histogram; ``quantiles`` for summary. ``is_monotonic`` is set for sums only,
    ``temporality`` ("DELTA" | "CUMULATIVE") for sum and the histograms.
    """

    name: str
    description: str
    unit: str
    kind: MetricKind
    attributes: dict[str, AttrValue]
    start_time_unix_nano: int
    time_unix_nano: int
    value: int | float | None = None
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()
    exp_scale: int | None = None
    exp_zero_count: int | None = None
    exp_positive_offset: int | None = None
    exp_positive_bucket_counts: tuple[int, ...] = ()
    exp_negative_offset: int | None = None
    exp_negative_bucket_counts: tuple[int, ...] = ()
    quantiles: tuple[tuple[float, float], ...] = ()  # (quantile, value)
    is_monotonic: bool | None = None
    temporality: str | None = None
    exemplars: tuple[ReceivedExemplar, ...] = ()
    flags: int = 0
    resource: dict[str, AttrValue] = field(default_factory=dict)
    scope_name: str = ""
    protocol: Protocol = "http"


Record: TypeAlias = ReceivedSpan | ReceivedLog | ReceivedMetric


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRequest:
    """One export request exactly as received, for byte-level round-trip tests.

    ``body`` is the serialized Export*ServiceRequest after transport decompression (for
    HTTP: after undoing ``Content-Encoding``; for gRPC grpcio undoes message compression).
    ``wire_size`` is the HTTP body size before decompression (== len(body) for gRPC,
    where the compressed size is not visible to the handler).
    """

    protocol: Protocol
    signal: Signal
    body: bytes
    headers: dict[str, str]  # lower-cased names; gRPC: invocation metadata
    content_encoding: str  # "" | "gzip" | "deflate" (HTTP), grpc-encoding for gRPC
    wire_size: int
    received_at: float  # time.monotonic()


# ----------------------------------------------------------------------------- decoding


def decode_any_value(value: common_pb2.AnyValue) -> AttrValue:
    """Turn an OTLP AnyValue into the plain Python value a test compares against."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return value.bytes_value
    if which == "array_value":
        return [decode_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return None


def decode_attributes(key_values: Iterable[common_pb2.KeyValue]) -> dict[str, AttrValue]:
    """Turn repeated KeyValue into a dict (a later duplicate key wins, as in most backends)."""
    return {kv.key: decode_any_value(kv.value) for kv in key_values}


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def _resource(resource: resource_pb2.Resource) -> dict[str, AttrValue]:
    return decode_attributes(resource.attributes)


def _decode_spans(
    request: trace_service_pb2.ExportTraceServiceRequest, protocol: Protocol
) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _resource(resource_spans.resource)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_enum_name(trace_pb2.Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
                        attributes=decode_attributes(span.attributes),
                        status_code=_enum_name(
                            trace_pb2.Status.StatusCode.Name(span.status.code), "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        events=tuple(
                            ReceivedEvent(
                                name=e.name,
                                time_unix_nano=e.time_unix_nano,
                                attributes=decode_attributes(e.attributes),
                            )
                            for e in span.events
                        ),
                        links=tuple(
                            ReceivedLink(
                                trace_id=link.trace_id.hex(),
                                span_id=link.span_id.hex(),
                                attributes=decode_attributes(link.attributes),
                            )
                            for link in span.links
                        ),
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        trace_state=span.trace_state,
                        flags=span.flags,
                        resource=resource,
                        scope_name=scope.name,
                        scope_version=scope.version,
                        protocol=protocol,
                    )
                )
    return out


def _decode_logs(
    request: logs_service_pb2.ExportLogsServiceRequest, protocol: Protocol
) -> list[ReceivedLog]:
    out: list[ReceivedLog] = []
    for resource_logs in request.resource_logs:
        resource = _resource(resource_logs.resource)
        for scope_logs in resource_logs.scope_logs:
            for rec in scope_logs.log_records:
                out.append(
                    ReceivedLog(
                        trace_id=rec.trace_id.hex(),
                        span_id=rec.span_id.hex(),
                        time_unix_nano=rec.time_unix_nano,
                        observed_time_unix_nano=rec.observed_time_unix_nano,
                        severity_number=rec.severity_number,
                        severity_text=rec.severity_text,
                        body=decode_any_value(rec.body) if rec.HasField("body") else None,
                        attributes=decode_attributes(rec.attributes),
                        event_name=rec.event_name,
                        flags=rec.flags,
                        resource=resource,
                        scope_name=scope_logs.scope.name,
                        protocol=protocol,
                    )
                )
    return out


def _number(point: metrics_pb2.NumberDataPoint | metrics_pb2.Exemplar) -> int | float | None:
    which = point.WhichOneof("value")
    if which == "as_int":
        return point.as_int
    if which == "as_double":
        return point.as_double
    return None


def _exemplars(points: Iterable[metrics_pb2.Exemplar]) -> tuple[ReceivedExemplar, ...]:
    return tuple(
        ReceivedExemplar(
            trace_id=e.trace_id.hex(),
            span_id=e.span_id.hex(),
            time_unix_nano=e.time_unix_nano,
            value=_number(e),
            attributes=decode_attributes(e.filtered_attributes),
        )
        for e in points
    )


def _temporality(value: int) -> str:
    return _enum_name(metrics_pb2.AggregationTemporality.Name(value), "AGGREGATION_TEMPORALITY_")


def _decode_metric(
    metric: metrics_pb2.Metric,
    resource: dict[str, AttrValue],
    scope_name: str,
    protocol: Protocol,
) -> list[ReceivedMetric]:
    which = metric.WhichOneof("data")
    point = functools.partial(
        ReceivedMetric,
        name=metric.name,
        description=metric.description,
        unit=metric.unit,
        resource=resource,
        scope_name=scope_name,
        protocol=protocol,
    )
    out: list[ReceivedMetric] = []
    if which in ("sum", "gauge"):
        data = metric.sum if which == "sum" else metric.gauge
        for p in data.data_points:
            out.append(
                point(
                    kind=cast(MetricKind, which),
                    attributes=decode_attributes(p.attributes),
                    start_time_unix_nano=p.start_time_unix_nano,
                    time_unix_nano=p.time_unix_nano,
                    value=_number(p),
                    is_monotonic=metric.sum.is_monotonic if which == "sum" else None,
                    temporality=(
                        _temporality(metric.sum.aggregation_temporality) if which == "sum" else None
                    ),
                    exemplars=_exemplars(p.exemplars),
                    flags=p.flags,
                )
            )
    elif which == "histogram":
        for h in metric.histogram.data_points:
            out.append(
                point(
                    kind="histogram",
                    attributes=decode_attributes(h.attributes),
                    start_time_unix_nano=h.start_time_unix_nano,
                    time_unix_nano=h.time_unix_nano,
                    count=h.count,
                    sum=h.sum if h.HasField("sum") else None,
                    min=h.min if h.HasField("min") else None,
                    max=h.max if h.HasField("max") else None,
                    bucket_counts=tuple(h.bucket_counts),
                    explicit_bounds=tuple(h.explicit_bounds),
                    temporality=_temporality(metric.histogram.aggregation_temporality),
                    exemplars=_exemplars(h.exemplars),
                    flags=h.flags,
                )
            )
    elif which == "exponential_histogram":
        for x in metric.exponential_histogram.data_points:
            out.append(
                point(
                    kind="exp_histogram",
                    attributes=decode_attributes(x.attributes),
                    start_time_unix_nano=x.start_time_unix_nano,
                    time_unix_nano=x.time_unix_nano,
                    count=x.count,
                    sum=x.sum if x.HasField("sum") else None,
                    min=x.min if x.HasField("min") else None,
                    max=x.max if x.HasField("max") else None,
                    exp_scale=x.scale,
                    exp_zero_count=x.zero_count,
                    exp_positive_offset=x.positive.offset,
                    exp_positive_bucket_counts=tuple(x.positive.bucket_counts),
                    exp_negative_offset=x.negative.offset,
                    exp_negative_bucket_counts=tuple(x.negative.bucket_counts),
                    temporality=_temporality(metric.exponential_histogram.aggregation_temporality),
                    exemplars=_exemplars(x.exemplars),
                    flags=x.flags,
                )
            )
    elif which == "summary":
        for s in metric.summary.data_points:
            out.append(
                point(
                    kind="summary",
                    attributes=decode_attributes(s.attributes),
                    start_time_unix_nano=s.start_time_unix_nano,
                    time_unix_nano=s.time_unix_nano,
                    count=s.count,
                    sum=s.sum,
                    quantiles=tuple((q.quantile, q.value) for q in s.quantile_values),
                    flags=s.flags,
                )
            )
    return out


def _decode_metrics(
    request: metrics_service_pb2.ExportMetricsServiceRequest, protocol: Protocol
) -> list[ReceivedMetric]:
    out: list[ReceivedMetric] = []
    for resource_metrics in request.resource_metrics:
        resource = _resource(resource_metrics.resource)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                out.extend(_decode_metric(metric, resource, scope_metrics.scope.name, protocol))
    return out


def decode_request(signal: Signal, body: bytes, protocol: Protocol = "http") -> list[Record]:
    """Decode one serialized Export*ServiceRequest into flat records.

    Public so a test can decode bytes it produced itself (e.g. with the SDK's encoders)
    and compare them with what the receiver got. Raises ``DecodeError`` on bad bytes.
    """
    if signal == "traces":
        return list(
            _decode_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(body), protocol)
        )
    if signal == "logs":
        return list(
            _decode_logs(logs_service_pb2.ExportLogsServiceRequest.FromString(body), protocol)
        )
    return list(
        _decode_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body), protocol)
    )


# What a successful export answers: the (empty) Export*ServiceResponse of the signal.
_OK_RESPONSES: Final[dict[Signal, bytes]] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
    "logs": logs_service_pb2.ExportLogsServiceResponse().SerializeToString(),
}

# gRPC service names come from the generated descriptors, so they cannot drift from the
# proto (the pb2_grpc stubs register exactly these names).
_GRPC_SERVICES: Final[dict[Signal, str]] = {
    "traces": trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    "metrics": metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    "logs": logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name,
}

_HTTP_PATHS: Final[dict[str, Signal]] = {f"/v1/{s}": s for s in SIGNALS}


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What a front end must answer: the core decides, the front end only translates."""

    outcome: Outcome
    body: bytes = b""  # response body for "ok"
    message: str = ""  # reason for "error" / "invalid"


# ----------------------------------------------------------------------------- receiver


class OTLPReceiver:
    """OTLP/HTTP + OTLP/gRPC receiver on 127.0.0.1 that stores what it receives, decoded.

    Thread-safe: front-end threads append, test threads query; all state is behind one
    re-entrant lock whose condition wakes ``wait_for`` as soon as something arrives.

    Modes (switchable at runtime via ``rx.mode = ...``):

    * ``"ok"``: store the data and answer the empty Export*ServiceResponse.
    * ``"error"``: answer HTTP ``error_http_status`` (503) / gRPC ``error_grpc_code``
      (UNAVAILABLE), store nothing. Like a collector that is up but refusing data.
    * ``"hang"``: read the request and never answer - until ``stop()`` (the connection
      is then dropped) or a switch to another mode (the request is then answered as that
      mode says), or the client gives up. Like a collector stuck on back-pressure.

    Every arriving request is counted (``request_count``) and, unless ``discard``, kept
    raw (last ``keep_raw``) whatever the mode, so a test can see retries of a refused
    export. ``discard=True`` only counts requests and bytes: no decoding, no storage.
    """

    def __init__(
        self,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        host: str = "127.0.0.1",
        mode: Mode = "ok",
        discard: bool = False,
        keep_raw: int = 64,
        error_http_status: int = 503,
        error_grpc_code: str = "UNAVAILABLE",
        grpc_workers: int = 32,
        on_records: Callable[[Protocol, Signal, Sequence[Record]], None] | None = None,
    ) -> None:
        """Configure; nothing is bound until ``start()`` (or ``with``).

        ``http_port``/``grpc_port`` 0 means "a free port", read it back from
        ``http_endpoint``/``grpc_endpoint``. ``error_grpc_code`` is a ``grpc.StatusCode``
        member name. ``on_records`` is called (on a server thread, outside the lock) with
        every decoded batch, e.g. to print it.
        """
        self._check_mode(mode)
        self._host = host
        self._requested_http_port = http_port
        self._requested_grpc_port = grpc_port
        self._mode: Mode = mode
        self._discard = discard
        self._error_http_status = error_http_status
        self._error_grpc_code: Any = getattr(grpc.StatusCode, error_grpc_code)
        self._grpc_workers = grpc_workers
        self._on_records = on_records

        self._cond = threading.Condition(threading.RLock())
        self._generation = 0  # bumped on every change, so wait_for never misses a wakeup
        self._spans: list[ReceivedSpan] = []
        self._logs: list[ReceivedLog] = []
        self._metrics: list[ReceivedMetric] = []
        self._raw: deque[RawRequest] = deque(maxlen=keep_raw)
        self._arrivals: Counter[tuple[Protocol, Signal]] = Counter()
        self._outcomes: Counter[tuple[Protocol, Signal, Outcome]] = Counter()
        self._bytes: Counter[tuple[Protocol, Signal]] = Counter()

        self._stopping = threading.Event()
        self._started = False
        self._http_server: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_server: Any = None
        self._grpc_executor: futures.ThreadPoolExecutor | None = None
        self._http_port = 0
        self._grpc_port = 0

    # -- lifecycle

    def start(self) -> Self:
        """Bind both servers and serve in daemon threads; returns self for chaining."""
        if self._started:
            raise RuntimeError("OTLPReceiver already started (it cannot be restarted)")
        self._started = True
        try:
            self._start_http()
            self._start_grpc()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_http(self) -> None:
        server = _HTTPServer((self._host, self._requested_http_port), _OTLPHTTPHandler, self)
        self._http_server = server
        self._http_port = server.server_address[1]
        # A short poll interval keeps shutdown() (which waits for the loop) fast.
        self._http_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-http:{self._http_port}",
            daemon=True,
        )
        self._http_thread.start()

    def _start_grpc(self) -> None:
        self._grpc_executor = futures.ThreadPoolExecutor(
            max_workers=self._grpc_workers, thread_name_prefix="otlp-receiver-grpc"
        )
        server = grpc.server(
            self._grpc_executor,
            options=[
                ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
                ("grpc.so_reuseport", 0),  # a "free port" must really be ours alone
            ],
        )
        handlers = []
        for sig in SIGNALS:
            # No (de)serializers: the handler gets and returns raw bytes, so raw
            # requests are byte-exact and discard mode never parses.
            method = grpc.unary_unary_rpc_method_handler(functools.partial(self._grpc_export, sig))
            handlers.append(
                grpc.method_handlers_generic_handler(_GRPC_SERVICES[sig], {"Export": method})
            )
        server.add_generic_rpc_handlers(tuple(handlers))
        port = server.add_insecure_port(f"{self._host}:{self._requested_grpc_port}")
        if not port:  # older grpcio returns 0 instead of raising
            raise OSError(f"cannot bind gRPC port {self._requested_grpc_port}")
        self._grpc_port = int(port)
        self._grpc_server = server
        server.start()

    def stop(self) -> None:
        """Stop both servers promptly, even with hung requests or idle keep-alive clients.

        Idempotent. Hung requests are released (their connections dropped without an
        answer); stored data stays readable after stop.
        """
        server = self._http_server
        if server is not None and self._http_thread is not None and self._http_thread.is_alive():
            # First stop accepting, so a client that retries when its hung request is
            # dropped below finds no server instead of a new, instantly dropped request.
            server.shutdown()  # ends serve_forever (within poll_interval)
        self._stopping.set()
        if self._grpc_server is not None:
            # grace=0: cancel in-flight RPCs now; hung handlers see _stopping and return.
            self._grpc_server.stop(grace=0).wait(timeout=5)
            self._grpc_server = None
        if self._grpc_executor is not None:
            self._grpc_executor.shutdown(wait=True, cancel_futures=True)
            self._grpc_executor = None
        if server is not None:
            self._http_server = None
            server.close_connections()  # unblocks handler threads waiting on idle sockets
            server.server_close()
            server.join_handlers(timeout=2.0)
        if self._http_thread is not None:
            self._http_thread.join(timeout=2.0)
            self._http_thread = None

    def __enter__(self) -> Self:
        """Start (unless already started) and return self."""
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop; exceptions propagate."""
        self.stop()

    # -- addresses and configuration

    @property
    def http_port(self) -> int:
        """The bound OTLP/HTTP port (0 before start)."""
        return self._http_port

    @property
    def grpc_port(self) -> int:
        """The bound OTLP/gRPC port (0 before start)."""
        return self._grpc_port

    @property
    def http_endpoint(self) -> str:
        """Base URL, e.g. for OTEL_EXPORTER_OTLP_ENDPOINT (the SDK appends /v1/<signal>)."""
        return f"http://{self._host}:{self._http_port}"

    @property
    def grpc_endpoint(self) -> str:
        """gRPC target as a URL; the http:// scheme makes the SDK exporter use plaintext."""
        return f"http://{self._host}:{self._grpc_port}"

    def http_url(self, signal: Signal) -> str:
        """Full per-signal URL: what an HTTP exporter's ``endpoint=`` argument needs."""
        return f"{self.http_endpoint}/v1/{signal}"

    @property
    def mode(self) -> Mode:
        """Current fault mode; assign to switch at runtime (takes effect within ~20 ms)."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._check_mode(value)
        with self._cond:
            self._mode = value
            self._generation += 1
            self._cond.notify_all()

    @property
    def discard(self) -> bool:
        """True if requests are only counted (no decoding, no raw storage)."""
        return self._discard

    @staticmethod
    def _check_mode(value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")

    # -- queries

    def spans(self, name: str | None = None, trace_id: str | None = None) -> list[ReceivedSpan]:
        """Received spans in arrival order, optionally filtered by name and/or hex trace id."""
        with self._cond:
            return [
                s
                for s in self._spans
                if (name is None or s.name == name) and (trace_id is None or s.trace_id == trace_id)
            ]

    def logs(self, trace_id: str | None = None) -> list[ReceivedLog]:
        """Received log records in arrival order, optionally only those of one trace."""
        with self._cond:
            return [r for r in self._logs if trace_id is None or r.trace_id == trace_id]

    def metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        """Received metric points in arrival order, optionally of one metric name.

        Note that a periodic reader sends cumulative points again on every collection;
        use ``latest_metric`` for "the current value".
        """
        with self._cond:
            return [m for m in self._metrics if name is None or m.name == name]

    def latest_metric(
        self, name: str, attributes: Mapping[str, AttrValue] | None = None
    ) -> ReceivedMetric | None:
        """The most recently received point of ``name`` whose attributes include ``attributes``."""
        wanted = dict(attributes or {})
        for point in reversed(self.metrics(name)):
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                return point
        return None

    def raw_requests(
        self, signal: Signal | None = None, protocol: Protocol | None = None
    ) -> list[RawRequest]:
        """The last ``keep_raw`` requests (any mode), oldest first, optionally filtered."""
        with self._cond:
            return [
                r
                for r in self._raw
                if (signal is None or r.signal == signal)
                and (protocol is None or r.protocol == protocol)
            ]

    def request_count(
        self,
        signal: Signal | None = None,
        protocol: Protocol | None = None,
        outcome: Outcome | None = None,
    ) -> int:
        """Requests that arrived (``outcome=None``) or that finished with ``outcome``.

        Outcomes: "ok" (accepted), "error" (refused by error mode), "hang" (never
        answered: stopped or client gave up), "invalid" (undecodable, answered 400 /
        INVALID_ARGUMENT). A hung request counts as arrived before it has an outcome.
        """
        with self._cond:
            if outcome is None:
                return sum(
                    n
                    for (p, s), n in self._arrivals.items()
                    if (signal is None or s == signal) and (protocol is None or p == protocol)
                )
            return sum(
                n
                for (p, s, o), n in self._outcomes.items()
                if o == outcome
                and (signal is None or s == signal)
                and (protocol is None or p == protocol)
            )

    def bytes_received(self, signal: Signal | None = None, protocol: Protocol | None = None) -> int:
        """Payload bytes received (HTTP: on the wire, before decompression; gRPC: message)."""
        with self._cond:
            return sum(
                n
                for (p, s), n in self._bytes.items()
                if (signal is None or s == signal) and (protocol is None or p == protocol)
            )

    def counts(self) -> dict[str, Any]:
        """JSON-able snapshot of all counters (what the CLI prints on exit)."""
        with self._cond:
            return {
                "requests": {p: {s: self._arrivals[(p, s)] for s in SIGNALS} for p in PROTOCOLS},
                "outcomes": {
                    f"{p}/{s}/{o}": n for (p, s, o), n in sorted(self._outcomes.items()) if n
                },
                "bytes": {p: {s: self._bytes[(p, s)] for s in SIGNALS} for p in PROTOCOLS},
                "items": {
                    "spans": len(self._spans),
                    "logs": len(self._logs),
                    "metric_points": len(self._metrics),
                },
            }

    def summary(self, limit: int = 20) -> str:
        """Human-readable account of what was received; used in wait_for failures."""
        with self._cond:
            lines = [f"OTLPReceiver mode={self._mode!r} discard={self._discard}"]
            arrivals = ", ".join(f"{p}/{s}={n}" for (p, s), n in sorted(self._arrivals.items()))
            lines.append(f"  requests: {arrivals or 'none'}")
            outcomes = ", ".join(
                f"{p}/{s}/{o}={n}" for (p, s, o), n in sorted(self._outcomes.items())
            )
            lines.append(f"  outcomes: {outcomes or 'none'}")
            lines.append(f"  spans ({len(self._spans)}):")
            lines += [
                f"    {s.name!r} kind={s.kind} trace={s.trace_id} span={s.span_id} "
                f"parent={s.parent_span_id or '-'} status={s.status_code} attrs={s.attributes}"
                for s in self._spans[-limit:]
            ]
            lines.append(f"  logs ({len(self._logs)}):")
            lines += [
                f"    [{r.severity_text or r.severity_number}] {r.body!r} "
                f"trace={r.trace_id or '-'} attrs={r.attributes}"
                for r in self._logs[-limit:]
            ]
            lines.append(f"  metric points ({len(self._metrics)}):")
            lines += [
                f"    {m.name} {m.kind} attrs={m.attributes} value={m.value} "
                f"count={m.count} sum={m.sum}"
                for m in self._metrics[-limit:]
            ]
            return "\n".join(lines)

    # -- waiting

    def wait_for(self, predicate: Callable[[], _T], timeout: float = 10.0, message: str = "") -> _T:
        """Return ``predicate()``'s first truthy result; AssertionError with a summary on timeout.

        Wakes immediately when data arrives (and polls every 50 ms for predicates that
        look at something else). The predicate runs *without* the receiver's lock, so it
        may do anything - even drive the code under test, which exports into this
        receiver - without deadlocking the server threads. Exceptions it raises propagate.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._cond:
                if self._generation == generation:  # nothing new since the predicate ran
                    self._cond.wait(min(remaining, 0.05))
        summary = self.summary()
        what = f": {message}" if message else ""
        raise AssertionError(
            f"OTLPReceiver.wait_for timed out after {timeout:.1f}s{what}\n{summary}"
        )

    def wait_for_spans(
        self,
        count: int = 1,
        *,
        name: str | None = None,
        trace_id: str | None = None,
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Wait until at least ``count`` matching spans arrived; return all matching spans."""
        return self.wait_for(
            lambda: found if len(found := self.spans(name, trace_id)) >= count else [],
            timeout,
            f"{count} span(s) name={name!r} trace_id={trace_id!r}",
        )

    def wait_for_logs(
        self, count: int = 1, *, trace_id: str | None = None, timeout: float = 10.0
    ) -> list[ReceivedLog]:
        """Wait until at least ``count`` matching log records arrived; return them all."""
        return self.wait_for(
            lambda: found if len(found := self.logs(trace_id)) >= count else [],
            timeout,
            f"{count} log record(s) trace_id={trace_id!r}",
        )

    def wait_for_metrics(
        self, name: str, count: int = 1, *, timeout: float = 10.0
    ) -> list[ReceivedMetric]:
        """Wait until at least ``count`` points of metric ``name`` arrived; return them all."""
        return self.wait_for(
            lambda: found if len(found := self.metrics(name)) >= count else [],
            timeout,
            f"{count} point(s) of metric {name!r}",
        )

    def wait_for_requests(
        self,
        count: int = 1,
        *,
        signal: Signal | None = None,
        protocol: Protocol | None = None,
        outcome: Outcome | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Wait until ``request_count(...) >= count``; return the count.

        The way to synchronise with hang/error/discard modes, where nothing is stored.
        """
        return self.wait_for(
            lambda: n if (n := self.request_count(signal, protocol, outcome)) >= count else 0,
            timeout,
            f"{count} request(s) signal={signal} protocol={protocol} outcome={outcome}",
        )

    def clear(self) -> None:
        """Forget all received data, raw requests and counters (mode is kept)."""
        with self._cond:
            self._spans.clear()
            self._logs.clear()
            self._metrics.clear()
            self._raw.clear()
            self._arrivals.clear()
            self._outcomes.clear()
            self._bytes.clear()

    # -- the core shared by both front ends

    def _record_outcome(self, protocol: Protocol, signal: Signal, outcome: Outcome) -> None:
        with self._cond:
            self._outcomes[(protocol, signal, outcome)] += 1
            self._generation += 1
            self._cond.notify_all()

    def _process(
        self,
        protocol: Protocol,
        signal: Signal,
        body: bytes,
        *,
        headers: dict[str, str],
        content_encoding: str,
        wire_size: int,
        client_alive: Callable[[], bool],
    ) -> _Verdict:
        """Count, apply the fault mode, decode and store one request; say what to answer."""
        with self._cond:
            self._arrivals[(protocol, signal)] += 1
            self._bytes[(protocol, signal)] += wire_size
            if not self._discard:
                self._raw.append(
                    RawRequest(
                        protocol=protocol,
                        signal=signal,
                        body=body,
                        headers=headers,
                        content_encoding=content_encoding,
                        wire_size=wire_size,
                        received_at=time.monotonic(),
                    )
                )
            self._generation += 1
            self._cond.notify_all()

        mode = self._mode
        if mode == "hang":
            while (mode := self._mode) == "hang" and not self._stopping.is_set() and client_alive():
                self._stopping.wait(_HANG_POLL_S)
            if mode == "hang" or self._stopping.is_set():
                self._record_outcome(protocol, signal, "hang")
                return _Verdict("hang")
        if mode == "error":
            self._record_outcome(protocol, signal, "error")
            return _Verdict("error", message=f"OTLPReceiver in error mode ({signal})")
        if self._discard:
            self._record_outcome(protocol, signal, "ok")
            return _Verdict("ok", _OK_RESPONSES[signal])

        try:
            records = decode_request(signal, body, protocol)
        except DecodeError as exc:
            self._record_outcome(protocol, signal, "invalid")
            return _Verdict("invalid", message=f"cannot decode {signal} request: {exc}")
        with self._cond:
            for rec in records:
                if isinstance(rec, ReceivedSpan):
                    self._spans.append(rec)
                elif isinstance(rec, ReceivedLog):
                    self._logs.append(rec)
                else:
                    self._metrics.append(rec)
            self._outcomes[(protocol, signal, "ok")] += 1
            self._generation += 1
            self._cond.notify_all()
        if self._on_records is not None:
            self._on_records(protocol, signal, records)
        return _Verdict("ok", _OK_RESPONSES[signal])

    # -- gRPC front end

    def _grpc_export(self, signal: Signal, request: bytes, context: Any) -> bytes:
        metadata: dict[str, str] = {
            str(k).lower(): v if isinstance(v, str) else repr(v)
            for k, v in context.invocation_metadata()
        }
        verdict = self._process(
            "grpc",
            signal,
            request,
            headers=metadata,
            content_encoding=metadata.get("grpc-encoding", ""),
            wire_size=len(request),
            client_alive=context.is_active,
        )
        if verdict.outcome == "ok":
            return verdict.body
        if verdict.outcome == "error":
            context.abort(self._error_grpc_code, verdict.message)
        elif verdict.outcome == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, verdict.message)
        else:  # hang ended by stop() or by the client giving up: nobody is listening
            context.abort(grpc.StatusCode.UNAVAILABLE, "OTLPReceiver stopped")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


# ----------------------------------------------------------------------------- HTTP front end


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that can drop its client connections on stop.

    Exporters keep connections alive, and a handler thread blocks reading the next
    request on such a connection; without closing those sockets stop() would wait.
    """

    daemon_threads = True
    block_on_close = False  # we join our own handler threads, with a timeout

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        receiver: OTLPReceiver,
    ) -> None:
        self.receiver = receiver
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, add: bool) -> None:
        """Register (add=True) or forget a live client connection and its thread."""
        with self._conn_lock:
            if add:
                self._connections.add(conn)
                self._handler_threads.add(threading.current_thread())
            else:
                self._connections.discard(conn)
                self._handler_threads.discard(threading.current_thread())

    def close_connections(self) -> None:
        """Shut down every client socket so blocked handler threads return."""
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        """Wait (bounded) for handler threads to finish, so tests leave no threads behind."""
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about dropped connections (normal at stop); report real bugs."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.receiver._stopping.is_set():
            return
        super().handle_error(request, client_address)


def _peer_alive(conn: socket.socket) -> bool:
    """True unless the client has closed its side (a non-blocking peek reads EOF)."""
    flag = getattr(socket, "MSG_DONTWAIT", 0)
    if not flag:
        return True  # cannot tell without blocking; rely on stop()/mode switch
    try:
        return conn.recv(1, socket.MSG_PEEK | flag) != b""
    except BlockingIOError:
        return True  # nothing to read: still connected and waiting for us
    except OSError:
        return False


def _read_chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int(rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline()  # CRLF after the chunk


class _OTLPHTTPHandler(BaseHTTPRequestHandler):
    """OTLP/HTTP binary protobuf: POST /v1/{traces,metrics,logs}, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a collector; needs Content-Length
    server_version = "kiki-otel-test-receiver"
    server: _HTTPServer

    def setup(self) -> None:
        """Register the connection so stop() can close it."""
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        """Forget the connection."""
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request stderr logging: tests and benchmarks do thousands."""

    def do_POST(self) -> None:
        """Read the body, undo Content-Encoding, and let the receiver core decide."""
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ValueError as exc:
            self._reply(400, _status_body(3, str(exc)))
            self.close_connection = True
            return
        signal_ = _HTTP_PATHS.get(path)
        if signal_ is None:
            self._reply(404, _status_body(5, f"unknown path {path}; want /v1/<signal>"))
            return
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type == "application/json":
            self._reply(415, _status_body(3, "OTLP/JSON is not supported by this receiver"))
            return
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            payload = _decompress(body, encoding)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            self._reply(400, _status_body(3, f"bad {encoding or 'identity'} body: {exc}"))
            return
        verdict = self.server.receiver._process(
            "http",
            signal_,
            payload,
            headers={k.lower(): v for k, v in self.headers.items()},
            content_encoding=encoding,
            wire_size=len(body),
            client_alive=lambda: _peer_alive(self.connection),
        )
        if verdict.outcome == "ok":
            self._reply(200, verdict.body)
        elif verdict.outcome == "error":
            status = self.server.receiver._error_http_status
            self._reply(status, _status_body(14, verdict.message))
        elif verdict.outcome == "invalid":
            self._reply(400, _status_body(3, verdict.message))
        else:  # hang: never answer; drop the connection
            self.close_connection = True

    def do_GET(self) -> None:
        """OTLP is POST-only; answer 405 like a collector does."""
        self._reply(405, _status_body(12, "method not allowed"), allow="POST")

    do_PUT = do_GET
    do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(cast(BinaryIO, self.rfile))
        length = self.headers.get("Content-Length")
        if length is None:
            raise ValueError("Content-Length or chunked Transfer-Encoding required")
        return self.rfile.read(int(length))

    def _reply(self, status: int, body: bytes, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _PROTOBUF)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(body)


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)  # zlib-wrapped, what the Python exporter sends
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, what some send
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _status_body(code: int, message: str) -> bytes:
    """A google.rpc.Status, the error body OTLP/HTTP prescribes."""
    body: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return body


# ----------------------------------------------------------------------------- CLI


def _print_records(protocol: Protocol, signal_: Signal, records: Sequence[Record]) -> None:
    for rec in records:
        if isinstance(rec, ReceivedSpan):
            line = f"span {rec.name!r} trace={rec.trace_id} span={rec.span_id} {rec.attributes}"
        elif isinstance(rec, ReceivedLog):
            line = f"log [{rec.severity_text}] {rec.body!r} trace={rec.trace_id or '-'}"
        else:
            line = f"metric {rec.name} {rec.kind} {rec.attributes} value={rec.value} sum={rec.sum}"
        print(f"{protocol}/{signal_}: {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a receiver until SIGINT/SIGTERM; print endpoints first and counts last (JSON)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.otlp_receiver",
        description="Stand-in OTLP collector (HTTP + gRPC) for benchmarks and manual runs.",
    )
    parser.add_argument("--http-port", type=int, default=4318, help="0 = any free port")
    parser.add_argument("--grpc-port", type=int, default=4317, help="0 = any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--discard", action="store_true", help="only count requests/bytes (lowest cost)"
    )
    parser.add_argument("--print", action="store_true", help="print every decoded record")
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rx = OTLPReceiver(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        host=args.host,
        mode=args.mode,
        discard=args.discard,
        on_records=_print_records if args.print and not args.discard else None,
    )
    with rx:
        print(
            json.dumps({"http_endpoint": rx.http_endpoint, "grpc_endpoint": rx.grpc_endpoint}),
            flush=True,
        )
        while not done.wait(0.5):
            pass
    print(json.dumps(rx.counts()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
