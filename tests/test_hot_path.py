"""The hot path's shortcuts past the SDK give exactly what the SDK path gives.

Server span attributes written directly (no re-validation) when nothing can observe the
difference, the SDK path as soon as something could: a span processor that looks at
spans in ``on_start``, a sampler that might read attributes, a value length limit.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

import kiki_otel
from kiki_otel._fast_span import DirectSpans
from kiki_otel._http_server import ServerTelemetry
from tests.conftest import Memory, layer_of


class _SeesStart(SpanProcessor):
    def __init__(self) -> None:
        self.at_start: list[dict[str, Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.at_start.append(dict(span.attributes or {}))


class _ReadsAttributes(Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "reads attributes"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def _middleware(app: FastAPI) -> ServerTelemetry:
    stack = app.middleware_stack or app.build_middleware_stack()
    while not isinstance(stack, ServerTelemetry):  # (the outermost: its bound _dispatch)
        stack = layer_of(stack).app
    return stack


async def _request(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get(
            "/items/3?token=abc&x=1",
            headers={"user-agent": "ua/1", "x-request-id": "client-1"},
        )
    assert response.status_code == 200


async def test_direct_span_attributes_equal_the_sdk_path(memory: Memory) -> None:
    """Same exported span attributes with the direct path (plain processors) and the SDK
    path (a processor that watches ``on_start``, which then sees the start attributes)."""
    app = _app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    await _request(app)
    assert _middleware(app)._direct is not None
    (direct,) = memory.spans()
    watcher = _SeesStart()
    provider = trace.get_tracer_provider()
    provider.add_span_processor(watcher)  # type: ignore[attr-defined]
    memory.span_exporter.clear()
    await _request(app)
    (sdk,) = memory.spans()
    assert watcher.at_start and watcher.at_start[0]["url.path"] == "/items/3"
    ignore = {"client.address"}
    got_direct = {k: v for k, v in dict(direct.attributes).items() if k not in ignore}
    got_sdk = {k: v for k, v in dict(sdk.attributes).items() if k not in ignore}
    assert got_direct == got_sdk
    assert got_direct["url.query"] == "token=REDACTED&x=1"
    assert got_direct["http.request.header.x-request-id"] == ("client-1",)
    assert got_direct["server.address"] == "testserver"
    assert (direct.name, direct.kind, direct.status.status_code) == (
        sdk.name,
        sdk.kind,
        sdk.status.status_code,
    )
    assert list(dict(direct.attributes)) == list(dict(sdk.attributes))  # same order too


async def test_a_sampler_set_later_is_asked_with_every_start_attribute(memory: Memory) -> None:
    """The direct path adds most start attributes once it knows the span is recorded (a
    dropped one keeps none); a sampler set on the tracer after setup, never checked
    attribute-blind, is asked the SDK's way, and sees them all."""
    app = _app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    await _request(app)
    middleware = _middleware(app)
    assert middleware._direct is not None
    seen: list[dict[str, Any]] = []

    class Noting(Sampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            attributes = kwargs.get("attributes") or args[4] or {}
            seen.append(dict(attributes))
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)  # the span's

        def get_description(self) -> str:
            return "noting"

    middleware._tracer.sampler = Noting()  # type: ignore[attr-defined]
    memory.span_exporter.clear()
    await _request(app)
    (span,) = memory.spans()
    assert (
        len(seen) == 1
        and list(seen[0].items()) == list(dict(span.attributes or {}).items())[: len(seen[0])]
    )
    assert seen[0]["url.query"] == "token=REDACTED&x=1"
    assert seen[0]["server.address"] == "testserver"
    assert seen[0]["user_agent.original"] == "ua/1"
    assert seen[0]["http.request.header.x-request-id"] == ("client-1",)


def test_direct_span_attributes_only_when_nothing_could_tell() -> None:
    """Built-in attribute-blind samplers and the SDK's own processors: direct. A custom
    sampler, a custom processor or a value length limit: the SDK path."""

    def direct(provider: TracerProvider) -> bool:
        return DirectSpans.for_tracer(provider.get_tracer("t")) is not None

    memory = InMemorySpanExporter()
    for sampler in (ALWAYS_ON, ALWAYS_OFF, TraceIdRatioBased(0.1), ParentBased(ALWAYS_ON)):
        provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.add_span_processor(BatchSpanProcessor(memory))
        assert direct(provider), sampler
        provider.shutdown()
    assert not direct(TracerProvider(sampler=_ReadsAttributes(), shutdown_on_exit=False))
    assert not direct(
        TracerProvider(sampler=ParentBased(_ReadsAttributes()), shutdown_on_exit=False)
    )
    custom = TracerProvider(shutdown_on_exit=False)
    custom.add_span_processor(_SeesStart())
    assert not direct(custom)
    limited = TracerProvider(
        span_limits=SpanLimits(max_span_attribute_length=5), shutdown_on_exit=False
    )
    assert not direct(limited)


def test_timestamp_is_structlogs_iso_utc_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """``add_timestamp`` writes what ``TimeStamper(fmt="iso", utc=True)`` writes for the
    same instant: floor to microseconds, no fraction at .000000, ``Z``; across seconds."""
    from datetime import UTC, datetime

    from kiki_otel import _logging

    instants = [
        1_795_000_000_000_000_000,
        1_795_000_000_000_000_999,
        1_795_000_000_000_001_000,
        1_795_000_000_123_456_789,
        1_795_000_000_999_999_999,
        1_795_000_001_500_000_000,
        1_795_000_001_000_000_000,
        1_700_000_000_000_000_000,
    ]
    for ns in instants:
        monkeypatch.setattr(_logging.time, "time_ns", lambda ns=ns: ns)
        got = _logging.add_timestamp(None, "info", {})["timestamp"]
        expected = (
            datetime.fromtimestamp(ns // 10**9, UTC)
            .replace(microsecond=ns % 10**9 // 1000)
            .isoformat()
            .replace("+00:00", "Z")
        )
        assert got == expected, ns


def test_correlation_ids_follow_the_current_span() -> None:
    """The per-span-context memo of hex ids never serves a stale span's ids."""
    from kiki_otel._logging import add_correlation

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    seen = set()
    for _ in range(3):
        with tracer.start_as_current_span("a") as span:
            ctx = span.get_span_context()
            for _ in range(2):
                event = add_correlation(None, "info", {})
                assert event["trace_id"] == f"{ctx.trace_id:032x}"
                assert event["span_id"] == f"{ctx.span_id:016x}"
            seen.add(event["span_id"])
        assert "trace_id" not in add_correlation(None, "info", {})
    assert len(seen) == 3


@pytest.mark.parametrize("env", [{}, {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"}])
def test_export_batches_are_sized_for_the_exporter_unless_sized_by_the_user(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """The official exporters (http/protobuf, gRPC) get batches of 64 (their encoding holds
    the GIL on the serving core); kiki's fast ones, whose items come encoded, 128 (fewer
    export-thread wake-ups). The SDK's own OTEL_BSP_*/OTEL_BLRP_* sizes win when set."""
    from opentelemetry import _logs

    from kiki_otel import testing
    from kiki_otel._providers import EXPORT_BATCH, FAST_EXPORT_BATCH

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for exporter, protocol, size in (
        ("fast", "http/protobuf", FAST_EXPORT_BATCH),
        ("official", "http/protobuf", EXPORT_BATCH),
        ("fast", "grpc", FAST_EXPORT_BATCH),
        ("official", "grpc", EXPORT_BATCH),
    ):
        monkeypatch.setenv("KIKI_OTEL_EXPORTER", exporter)
        kiki_otel.configure(
            service_name="svc",
            exporter_otlp_endpoint="http://127.0.0.1:9",
            exporter_otlp_protocol=protocol,
            metrics_exporter="none",
            exporter_otlp_timeout=100,  # refused exports end here, not in a later test
        )
        spans = trace.get_tracer_provider()._active_span_processor._span_processors[0]  # type: ignore[attr-defined]
        logs = _logs.get_logger_provider()._multi_log_record_processor._log_record_processors[0]  # type: ignore[attr-defined]
        expected_spans = int(env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", size))
        assert spans._batch_processor._max_export_batch_size == expected_spans, exporter
        assert logs._batch_processor._max_export_batch_size == size, exporter
        testing.reset()
    assert (EXPORT_BATCH, FAST_EXPORT_BATCH) == (64, 128)


def test_direct_paths_turn_off_when_sdk_internals_change() -> None:
    """The shortcuts read SDK internals; if a newer SDK renames them, they switch themselves off
    (the SDK path is used) instead of failing requests or dropping log records."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    from kiki_otel._otlp_http import FastLogExporter, OTLPHttpClient, direct_logs

    tracer = TracerProvider().get_tracer("t")
    assert DirectSpans.for_tracer(tracer) is not None
    del tracer._span_limits  # type: ignore[attr-defined]
    assert DirectSpans.for_tracer(tracer) is None

    provider = LoggerProvider(shutdown_on_exit=False)
    client = OTLPHttpClient("http://127.0.0.1:9/v1/logs")
    provider.add_log_record_processor(BatchLogRecordProcessor(FastLogExporter(client)))
    logger = provider.get_logger("t")
    assert direct_logs(provider, logger) is not None
    saved = provider._multi_log_record_processor
    del provider._multi_log_record_processor
    try:
        assert direct_logs(provider, logger) is None
    finally:
        provider._multi_log_record_processor = saved
        provider.shutdown()
