"""The hand-written OTLP encoder produces exactly the official encoder's bytes.

Spans and log records come from the real SDK (in-memory exporters); each batch is encoded by
``kiki_otel._otlp_encode`` and by ``opentelemetry-exporter-otlp-proto-common`` followed by
``SerializeToString()``. Bytes must be equal, and decoding ours with opentelemetry-proto must
give the official message.
"""

from __future__ import annotations

import enum
import importlib.util
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as official_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from kiki_otel import _otlp_encode
from kiki_otel._otlp_encode import encode_logs, encode_spans

RESOURCE = Resource.create(
    {"service.name": "svc", "service.version": "1.2.3", "host.cores": 2, "ratio": 0.5},
    schema_url="https://opentelemetry.io/schemas/1.26.0",
)


ENCODERS = ["python", "native"] if _otlp_encode._native is not None else ["python"]


@pytest.fixture(autouse=True, params=ENCODERS)
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the Python encoder, and again with the C one where it is built:
    the same bytes either way. The C one bypasses the Python caches, so the tests that
    look into those caches look only when the Python encoder ran."""
    if request.param == "python":
        for name in ("_native_fields", "_native_span", "_native_log_event"):
            monkeypatch.setattr(_otlp_encode, name, None)
    return str(request.param)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    _otlp_encode._field_cache.clear()
    _otlp_encode._text_fields.clear()
    _otlp_encode._log_heads.clear()
    _otlp_encode._cached[0] = _otlp_encode._blocks_cached[0] = 0
    yield
    _otlp_encode._field_cache.clear()
    _otlp_encode._text_fields.clear()
    _otlp_encode._log_heads.clear()
    _otlp_encode._cached[0] = _otlp_encode._blocks_cached[0] = 0


def _assert_counted() -> None:
    """The running counts are what the tag caches hold: fields, and runs in their layouts."""
    caches = _otlp_encode._field_cache.values()
    assert _otlp_encode._cached[0] == sum(len(cache.fields) for cache in caches)
    assert _otlp_encode._blocks_cached[0] == sum(
        len(shape.blocks or ()) for cache in caches for shape in cache.shapes.values()
    )


def _spans(resource: Resource = RESOURCE) -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("kiki_otel.http.server", "0.1", schema_url="https://x/1")
    other = provider.get_tracer("other", attributes={"scope.attr": "v", "n": 3})
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1"), ("other", "y2")]),
    )
    attrs = {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "server.port": 8000,
        "negative": -5,
        "big": (1 << 63) - 1,
        "min": -(1 << 63),
        "float": 1.5,
        "zero": 0,
        "false": False,
        "true": True,
        "empty": "",
        "unicode": "grüße ✓ 🚀",
        "long": "x" * 300,
        "strs": ("a", "b"),
        "ints": [1, 2, 3],
        "floats": (0.25, -1.0),
        "bools": [True, False],
        "empty_list": (),
    }
    with tracer.start_as_current_span(
        "GET /items/{id}",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes=attrs,
        links=[Link(remote, {"link.attr": 1}), Link(remote)],
    ) as server:
        server.add_event("started", {"k": "v"})
        server.add_event("no-attrs")
        with other.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.ERROR, "boom")
            child.record_exception(ValueError("bad value"))
        with tracer.start_as_current_span("internal") as internal:
            internal.set_status(StatusCode.OK)
        tracer.start_span("producer", kind=SpanKind.PRODUCER).end()
        tracer.start_span("consumer", kind=SpanKind.CONSUMER).end()
    tracer.start_span("root-no-parent").end()
    tracer.start_span("").end()
    return list(exporter.get_finished_spans())


def _logs(resource: Resource = RESOURCE) -> list[Any]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("kiki_otel.access", "1.0", schema_url="https://x/1")
    other = provider.get_logger("other", attributes={"scope.attr": True})
    span_provider = TracerProvider(resource=resource)
    tracer = span_provider.get_tracer("t")
    logger.emit(body="plain", severity_number=SeverityNumber.INFO, severity_text="INFO")
    with tracer.start_as_current_span("s"):
        logger.emit(
            timestamp=1_700_000_000_123_456_789,
            body="http.request",
            severity_number=SeverityNumber.ERROR,
            severity_text="ERROR",
            attributes={"status": 500, "route": "/items/{id}", "duration_ms": 1.25, "x": None},
        )
    logger.emit(body={"nested": {"a": [1, "b", None]}, "n": 1}, attributes={"k": ("a", "b")})
    logger.emit(body=["a", 1, 2.5, True], event_name="my.event")
    logger.emit(body=None)
    logger.emit(body=b"\x00\x01raw")
    other.emit(body="other scope", severity_number=SeverityNumber.WARN)
    unsampled = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    with tracer.start_as_current_span(
        "u", context=set_span_in_context(NonRecordingSpan(unsampled))
    ):
        logger.emit(body="unsampled parent")
    return list(exporter.get_finished_logs())


def test_spans_encode_to_the_official_bytes() -> None:
    """Every span shape (kinds, remote parent, trace state, events, links, status, every
    attribute type, several scopes) encodes to exactly the official encoder's bytes."""
    spans = _spans()
    expected = official_spans(spans).SerializeToString()
    assert encode_spans(spans) == expected
    # and again from the attribute cache
    assert encode_spans(spans) == expected


def test_spans_decode_with_opentelemetry_proto() -> None:
    """opentelemetry-proto parses our bytes into the message the official encoder builds."""
    spans = _spans()
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert decoded == official_spans(spans)
    server = next(
        s
        for rs in decoded.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.name == "GET /items/{id}"
    )
    assert server.trace_state == "vendor=x1,other=y2"
    assert server.flags == 0x300


def test_one_span_and_empty_batch() -> None:
    """A batch of one span and an empty batch match the official encoding too."""
    spans = _spans()
    for batch in ([spans[0]], [spans[-1]], []):
        assert encode_spans(batch) == official_spans(batch).SerializeToString()


def test_several_resources_are_grouped_like_the_official_encoder() -> None:
    """Spans from two resources (and equal resources in distinct objects) group the same way."""
    a = _spans(RESOURCE)
    b = _spans(Resource.create({"service.name": "other"}))
    c = _spans(Resource.create(dict(RESOURCE.attributes), schema_url=RESOURCE.schema_url))
    batch = [a[0], b[0], a[1], c[2], b[1]]
    assert encode_spans(batch) == official_spans(batch).SerializeToString()


def test_one_resource_and_scope_or_several_group_like_the_official_encoder() -> None:
    """A batch of one resource and one scope (grouped without the loop) and batches that
    mix scopes or hold an item without a scope encode to the official bytes."""
    spans = _spans()
    one_scope = [spans[0], spans[0], spans[0]]
    assert len({id(s.instrumentation_scope) for s in spans}) > 1
    without_scope = [spans[0], _NoScope(spans[0]), spans[0]]
    for batch in (one_scope, spans, spans[::-1], without_scope, [_NoScope(spans[0])] * 2):
        assert encode_spans(batch) == official_spans(batch).SerializeToString()


class _NoScope:
    """A span seen without an instrumentation scope (the SDK allows None)."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def __getattr__(self, name: str) -> Any:
        return None if name == "instrumentation_scope" else getattr(self._span, name)


def test_logs_encode_to_the_official_bytes() -> None:
    """Log records (bodies of every type, trace context, event name, scopes, None values)
    encode to exactly the official encoder's bytes, and decode to the official message."""
    logs = _logs()
    expected = official_logs(logs)
    assert encode_logs(logs) == expected.SerializeToString()
    assert encode_logs(logs) == expected.SerializeToString()
    assert ExportLogsServiceRequest.FromString(encode_logs(logs)) == expected


def test_an_unencodable_attribute_is_skipped_like_the_official_encoder() -> None:
    """An int beyond int64 is dropped (and logged) by both encoders; the rest is kept."""
    logs = _logs()
    record = logs[0]
    record.log_record.attributes = {"ok": "yes", "huge": 1 << 70, "after": 1}
    assert encode_logs([record]) == official_logs([record]).SerializeToString()


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch, encoder: str) -> None:
    """The attribute cache never grows past its bounds: a key with too many values stops
    caching (ids, durations), too many keys go uncached; the bytes never change."""
    monkeypatch.setattr(_otlp_encode, "_VALUES_MAX", 10)
    monkeypatch.setattr(_otlp_encode, "_KEYS_MAX", 5)
    spans, logs = _spans(), _logs()
    before = encode_spans(spans), encode_logs(logs)
    tag = b"\xfa\x07"  # a tag of its own: the spans and logs above filled the real ones
    for i in range(50):
        attributes = {"id": i, "route": "/a", f"k{i}": True}
        got = _otlp_encode._attributes(tag, attributes)
        assert got == _otlp_encode._attributes(tag, attributes)
        assert got == b"".join(
            _otlp_encode._ld(tag, _otlp_encode._key_value(k, v)) for k, v in attributes.items()
        )
    if encoder == "python":
        cache = _otlp_encode._field_cache[tag]
        keys = cache.keys
        assert len(keys) <= 5
        assert keys["id"].closed  # unbounded: closed, its fields given back
        assert not any(k[0] == "id" for k in cache.fields)
        assert not keys["route"].closed and keys["route"].count == 1
        assert all(k.count <= 10 for k in keys.values())
        for key, entry in keys.items():
            assert entry.count == sum(1 for k in cache.fields if k[0] == key)
    _assert_counted()
    assert (encode_spans(spans), encode_logs(logs)) == before
    # the overall budget and the size cap: no more caching, same bytes
    monkeypatch.setattr(_otlp_encode, "_CACHED_MAX", _otlp_encode._cached[0])
    monkeypatch.setattr(_otlp_encode, "_FIELD_BYTES_MAX", 0)
    budget = _otlp_encode._cached[0]
    assert _otlp_encode._attributes(tag, {"route": "/b", "long": "x" * 600}) == b"".join(
        _otlp_encode._ld(tag, _otlp_encode._key_value(k, v))
        for k, v in {"route": "/b", "long": "x" * 600}.items()
    )
    assert _otlp_encode._cached[0] == budget
    if encoder == "python":
        assert ("route", "/b") not in _otlp_encode._field_cache[tag].fields
    assert encode_spans(spans) == official_spans(spans).SerializeToString()
    assert encode_logs(logs) == official_logs(logs).SerializeToString()


def test_unbounded_keys_encode_like_the_official_encoder(
    monkeypatch: pytest.MonkeyPatch, encoder: str
) -> None:
    """Values of a key whose cache closed (ids, durations) take a shorter path for strs and
    floats: the same bytes as the official encoder around every length-byte boundary (the
    value's, and the whole field's, which the key's length moves)."""
    monkeypatch.setattr(_otlp_encode, "_VALUES_MAX", 4)
    record = _logs()[0]
    sizes = (116, 117, 118, 119, 123, 124, 125, 126, 127, 128, 300)
    texts = ["", "a", "é" * 62, *("x" * n for n in sizes)]
    floats = [0.0, -1.5, 1e300, float("inf"), 2.5e-10]
    long_keys = {"f" * n: n for n in (113, 114, 115, 116, 117)}  # a float field of ~128 bytes
    for round_ in range(3):  # the first values fill the caches, then the keys close
        for i, text in enumerate(texts):
            record.log_record.attributes = {
                "text": text,
                "float": floats[i % len(floats)] + round_,
                "int": i + 1000 * round_,
                "k": f"{text}{round_}",
                **{key: n + i + round_ + 0.5 for key, n in long_keys.items()},
            }
            expected = official_logs([record]).SerializeToString()
            assert encode_logs([record]) == expected, (round_, len(text))
    if encoder == "python":
        cache = _otlp_encode._field_cache[b"\x32"]
        assert cache.keys["text"].closed
        assert not any(key[0] == "float" for key in cache.fields)  # floats are never cached


def test_signed_zeros_and_nans_are_not_mistaken_for_cached_floats() -> None:
    """0.0 and -0.0 are one dict key but two doubles on the wire; NaNs are never equal."""
    record = _logs()[0]
    for value in (0.0, -0.0, 0.0, float("nan"), -0.0, float("-nan"), 1.0):
        for layout in ({"v": value}, {"v": value, "route": "/a"}, {"route": "/a", "v": value}):
            record.log_record.attributes = layout
            expected = official_logs([record]).SerializeToString()
            assert encode_logs([record]) == expected, (value, layout)


def test_cached_values_of_equal_but_different_types_stay_apart() -> None:
    """True == 1 == 1.0 in a dict, but they are different AnyValues on the wire."""
    logs = _logs()
    record = logs[0]
    for value in (True, 1, 1.0, "1", None, False, 0, 0.0, ""):
        record.log_record.attributes = {"v": value}
        assert encode_logs([record]) == official_logs([record]).SerializeToString(), value


def test_bulk_lookups_keep_types_unhashables_and_skipped_fields_apart() -> None:
    """A mapping's cached fields are looked up all at once: equal values of different types
    (True, 1, 1.0, an IntEnum, a StrEnum) next to each other still encode as their own
    types, an unhashable value beside cached ones costs them nothing, and a field an event
    skips stays out even when an SDK record cached it as an attribute."""
    from kiki_otel._logging import _RECORD_FIELDS
    from kiki_otel._otlp_encode import encode_log, encode_log_event

    class Code(enum.IntEnum):
        OK = 1

    class Word(enum.StrEnum):
        ONE = "1"

    record = _logs()[0]
    shapes: list[dict[str, Any]] = [
        {"v": True, "w": 1, "x": 1.0, "y": "1"},
        {"v": 1, "w": 1.0, "x": True, "y": Word.ONE},
        {"v": Code.OK, "w": "1", "x": 1, "y": 1.0, "tags": ["a", "b"]},
        {"v": None, "w": False, "x": 0, "y": ""},
    ]
    for round_ in range(3):  # uncached, then every value cached
        for attributes in shapes:
            record.log_record.attributes = attributes
            expected = official_logs([record]).SerializeToString()
            assert encode_logs([record]) == expected, (round_, attributes)

    record.log_record.attributes = {"level": "info", "event": "e", "timestamp": "t"}
    encode_logs([record])  # now cached under the log attributes' tag
    resource, scope = Resource({"service.name": "svc"}), InstrumentationScope("kiki_otel.x")
    fields = (1, SeverityNumber.INFO, "INFO", "e")
    ids = (0, 0, 0, resource, scope)
    event = {"a": 1, "event": "e", "level": "info", "timestamp": "t", "b": "x"}
    direct = encode_log_event(*fields, event, _RECORD_FIELDS, *ids)
    assert direct is not None
    assert direct.payload == encode_log(*fields, {"a": 1, "b": "x"}, *ids).payload


def test_direct_log_records_encode_like_the_sdk_records() -> None:
    """``encode_log`` (the emitter's shortcut past the SDK's record objects) gives exactly
    the bytes of the SDK record with the same fields, in and out of a span, and batches of
    such pre-encoded records mixed with SDK records encode like the SDK records alone."""
    from kiki_otel._otlp_encode import Encoded, encode_log

    sdk_logs = [r for r in _logs() if r.log_record.event_name is None]
    direct: list[Any] = []
    for readable in sdk_logs:
        record = readable.log_record
        # encode_log stamps one clock reading as both times, as the emitter does
        record.timestamp = record.observed_timestamp = record.timestamp or record.observed_timestamp
        direct.append(
            encode_log(
                record.timestamp,
                record.severity_number,
                record.severity_text,
                record.body,
                dict(record.attributes or {}),
                record.trace_id,
                record.span_id,
                record.trace_flags,
                readable.resource,
                readable.instrumentation_scope,
            )
        )
    assert len(direct) == len(sdk_logs) > 5
    assert all(type(item) is Encoded for item in direct)
    official = official_logs(sdk_logs).SerializeToString()
    assert encode_logs(direct) == official
    mixed = [item if i % 2 else sdk_logs[i] for i, item in enumerate(direct)]
    assert encode_logs(mixed) == official


def test_log_events_encode_like_their_converted_attributes() -> None:
    """``encode_log_event`` (attributes read and encoded straight from the event dict) gives
    the bytes of ``encode_log`` over the attribute dict the emitter would build, for first
    (uncached) and repeated (cached) values and for a key past its value cache; an event
    with a field that needs converting (an int beyond 64 bits too), or a key the SDK would
    drop, gives None."""
    from kiki_otel._logging import _RECORD_FIELDS, _attributes_of
    from kiki_otel._otlp_encode import encode_log, encode_log_event

    resource, scope = Resource({"service.name": "svc"}), InstrumentationScope("kiki_otel.x")

    def both(event: dict[Any, Any]) -> tuple[Any, Any]:
        fields = (1_700_000_000_000_000_001, SeverityNumber.WARN, "WARN", "body")
        ids = (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1, resource, scope)
        direct = encode_log_event(*fields, event, _RECORD_FIELDS, *ids)
        attributes, clean = _attributes_of(event)
        assert clean
        return direct, encode_log(*fields, attributes, *ids)

    plain = {
        "event": "e",
        "method": "GET",
        "status": 503,
        "ms": 1.5,
        "ok": True,
        "none": None,
        "level": "warning",
        "empty": "",
        "timestamp": "t",
        "big": 1 << 62,
    }
    for round_ in range(3):  # uncached, then cached
        direct, converted = both(plain)
        assert direct is not None and direct.payload == converted.payload, round_
    for i in range(300):  # a key with unbounded values closes its cache: still the same bytes
        direct, converted = both({"request_id": f"{i:032x}", "n": i})
        assert direct is not None and direct.payload == converted.payload
    fields = (1, SeverityNumber.INFO, "INFO", "b")
    ids = (0, 0, 0, resource, scope)
    for needs_converting in ({"tags": ["a"]}, {"d": {"k": 1}}, {"": "x"}, {1: "x"}, {"n": 1 << 64}):
        assert encode_log_event(*fields, needs_converting, _RECORD_FIELDS, *ids) is None


def test_pre_encoded_spans_give_the_same_request() -> None:
    """Spans encoded when they end (``encode_span``), alone or mixed with SDK spans in one
    batch, give the official request bytes (grouping by resource and scope included)."""
    from kiki_otel._otlp_encode import encode_span

    spans = _spans() + _spans(Resource.create({"service.name": "other"}))
    official = official_spans(spans).SerializeToString()
    assert encode_spans([encode_span(s) for s in spans]) == official
    assert encode_spans([encode_span(s) if i % 3 else s for i, s in enumerate(spans)]) == official


def test_sliced_encoding_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches longer than a slice (the encoder lets other threads run between slices)
    still encode to exactly the official bytes."""
    import time

    monkeypatch.setattr(_otlp_encode, "_SLICE_SECONDS", 0.0)  # hand over at every check
    sleep = time.sleep
    hand_overs: list[float] = []

    def counted(seconds: float) -> None:
        hand_overs.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(_otlp_encode.time, "sleep", counted)
    spans, logs = _spans() * 20, _logs() * 20
    assert len(spans) > 32 and len(logs) > 32
    assert encode_spans(spans) == official_spans(spans).SerializeToString()
    assert encode_logs(logs) == official_logs(logs).SerializeToString()
    assert hand_overs and set(hand_overs) == {0}


def test_every_span_shape_encodes_like_the_official_encoder() -> None:
    """The SDK's own spans are read field by field (past the copying properties): with
    dropped attributes/events/links, an ended ``_Span`` itself (what the direct request
    span path queues), a hand-made ReadableSpan with plain tuples, and a subclass
    overriding a property (read through its properties) all give the official bytes."""
    from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
    from opentelemetry.trace import Link

    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1)
    provider = TracerProvider(resource=RESOURCE, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    span = tracer.start_span(
        "limited", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(remote), Link(remote)]
    )
    span.add_event("one")
    span.add_event("two")
    span.end()
    (limited,) = exporter.get_finished_spans()
    assert (limited.dropped_attributes, limited.dropped_events, limited.dropped_links) == (
        1,
        1,
        1,
    )
    hand_made = ReadableSpan(
        name="hand-made",
        context=SpanContext(0x1, 0x2, is_remote=False),
        attributes={"k": "v"},
        events=(Event("e", {"x": 1}, timestamp=5),),
        links=(Link(remote, {"l": True}),),
        start_time=1,
        end_time=2,
    )

    class Renamed(ReadableSpan):
        @property
        def name(self) -> str:
            return "renamed"

    renamed = Renamed(name="original", context=SpanContext(0x1, 0x3, is_remote=False))
    spans = [limited, span, hand_made, renamed]  # `span` is the ended _Span itself
    assert type(span) in _otlp_encode._SDK_SPAN_TYPES
    assert type(renamed) not in _otlp_encode._SDK_SPAN_TYPES
    assert encode_spans(spans) == official_spans(spans).SerializeToString()
    decoded = ExportTraceServiceRequest.FromString(encode_spans([renamed]))
    assert decoded.resource_spans[0].scope_spans[0].spans[0].name == "renamed"


class _OtherContext(SpanContext):
    """Not the exact ``SpanContext``: the encoder reads it through its properties."""

    @property
    def span_id(self) -> int:
        return 0x77


def test_span_contexts_encode_like_the_official_encoder_by_position_or_property() -> None:
    """Exact ``SpanContext`` fields are read by position, any other class's through its
    properties: remote and local parents, a trace state, no parent, all give the official
    bytes."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import TraceState

    state = TraceState([("vendor", "v1")])
    spans = []
    for kind in (SpanContext, _OtherContext):
        for remote in (True, False):
            parent = kind(0xABC, 0xDEF, is_remote=remote, trace_flags=TraceFlags(1))
            context = kind(0xABC, 0x123, is_remote=False, trace_state=state)
            spans.append(ReadableSpan(name="child", context=context, parent=parent))
        spans.append(ReadableSpan(name="root", context=kind(0xABC, 0x124, is_remote=False)))
    assert encode_spans(spans) == official_spans(spans).SerializeToString()
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans[-2:]))
    other_child = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert other_child.span_id == (0x77).to_bytes(8, "big")  # the property, not the tuple
    assert other_child.parent_span_id == (0x77).to_bytes(8, "big")


def test_an_attribute_protobuf_cannot_take_is_reported_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A uint64 hash as a span attribute (beyond int64): dropped from every span, reported
    once per key per minute with the count, not an error with a traceback per span."""
    spans = _spans()
    caplog.set_level("WARNING", logger="kiki_otel._otlp_encode")
    _otlp_encode._drops.state.clear()
    for span in spans[:1] * 5:
        span._attributes = {"app.hash": 2**64 - 1, "ok": 1}  # as set_attribute would keep it
        request = ExportTraceServiceRequest.FromString(encode_spans([span]))
        (got,) = request.resource_spans[0].scope_spans[0].spans
        assert [a.key for a in got.attributes] == ["ok"]
    reports = [r for r in caplog.records if "app.hash" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelname == "WARNING" and not reports[0].exc_info
    assert _otlp_encode._drops.state["app.hash"][1] == 4  # held back, counted


def test_repeated_names_and_bodies_are_cached_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Span names, log bodies and severity texts repeat (one name per route): cached whole,
    up to a bound, and the bytes match the official encoder with the cache empty, filling,
    full, and for a text too long to cache."""
    monkeypatch.setattr(_otlp_encode, "_TEXT_FIELDS_MAX", 3)
    spans, logs = _spans(), _logs()
    for _ in range(2):
        assert encode_spans(spans) == official_spans(spans).SerializeToString()
        assert encode_logs(logs) == official_logs(logs).SerializeToString()
    assert len(_otlp_encode._text_fields) == 3
    record = logs[0]
    record.log_record.body = "x" * 600  # over _FIELD_BYTES_MAX: encoded, not kept
    assert encode_logs([record]) == official_logs([record]).SerializeToString()
    assert all(len(field) <= 512 for field in _otlp_encode._text_fields.values())


def _layouts(i: int) -> list[dict[Any, Any]]:
    """Attribute layouts as services make them: repeated values around varying ones (an id,
    a duration, a path with 40 values), other types, and equal values of different types."""

    class Word(enum.StrEnum):
        GET = "GET"

    return [
        {"method": "GET", "route": "/items/{id}", "status": 200, "ok": True, "none": None},
        {"method": "GET", "duration_ms": i / 7, "id": f"{i:032x}", "status": 200},
        {"id": f"{i:032x}", "path": f"/items/{i % 40}", "n": i % 3, "ratio": -0.0},
        {"method": Word.GET, "tags": ("a", "b"), "status": 200, "flag": i % 2 == 0},
        {"flag": i % 2, "status": 200.0 if i % 3 else 200, "method": "GET"},
        {"big": (1 << 63) - 1 if i % 2 else -(1 << 63), "route": "/a"},
    ]


def test_layouts_encode_like_the_official_encoder_while_their_keys_close(
    monkeypatch: pytest.MonkeyPatch, encoder: str
) -> None:
    """Repeated layouts go through their cached runs of fields; the bytes stay the official
    ones on every round: while the caches fill, once ids and paths stop caching (their
    layouts are rebuilt without them), and for values of other types in one position."""
    monkeypatch.setattr(_otlp_encode, "_VALUES_MAX", 30)
    record = _logs()[0]
    for i in range(120):
        for attributes in _layouts(i):
            record.log_record.attributes = attributes
            expected = official_logs([record]).SerializeToString()
            assert encode_logs([record]) == expected, (i, attributes)
    _assert_counted()
    if encoder != "python":
        return
    cache = _otlp_encode._field_cache[b"\x32"]
    assert cache.keys["id"].closed and cache.keys["path"].closed
    assert not cache.keys["route"].closed and not cache.keys["status"].closed
    repeated = next(s for layout, s in cache.shapes.items() if layout[0][0] == "method")
    assert repeated.blocks is not None and len(repeated.blocks) == 1  # one run, reused
    with_ids = next(s for layout, s in cache.shapes.items() if "duration_ms" in layout[0])
    assert [key for _, key, _ in with_ids.varying] == ["duration_ms", "id"]


def test_layout_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layouts per tag and runs per layout are bounded: past them fields are encoded one
    by one, to the same bytes, and what was held is counted out of the overall budget."""
    monkeypatch.setattr(_otlp_encode, "_SHAPES_MAX", 3)
    monkeypatch.setattr(_otlp_encode, "_BLOCKS_MAX", 5)
    record = _logs()[0]
    for i in range(40):
        layouts = [*_layouts(i), {f"k{i}": "v"}, {"user": f"u{i}", "route": "/a"}]
        for attributes in layouts:
            record.log_record.attributes = attributes
            expected = official_logs([record]).SerializeToString()
            assert encode_logs([record]) == expected, (i, attributes)
    cache = _otlp_encode._field_cache[b"\x32"]
    assert len(cache.shapes) == 3
    assert all(s.blocks is None or len(s.blocks) <= 5 for s in cache.shapes.values())
    _assert_counted()


def test_a_repeated_layout_still_rejects_what_protobuf_cannot_take() -> None:
    """An int beyond 64 bits where the layout had cached ints: an SDK record drops it (as
    the official encoder does), an event gives up for the caller to convert it."""
    from kiki_otel._logging import _RECORD_FIELDS
    from kiki_otel._otlp_encode import encode_log_event

    record = _logs()[0]
    resource, scope = Resource({"service.name": "svc"}), InstrumentationScope("kiki_otel.x")
    fields = (1, SeverityNumber.INFO, "INFO", "e")
    ids = (0, 0, 0, resource, scope)
    for n in (1, 2, 1 << 70, 1, 1 << 64, -(1 << 64)):
        record.log_record.attributes = {"route": "/a", "n": n, "after": "x"}
        assert encode_logs([record]) == official_logs([record]).SerializeToString(), n
        event = {"event": "e", "route": "/a", "n": n, "after": "x"}
        assert (encode_log_event(*fields, event, _RECORD_FIELDS, *ids) is None) == (
            not -(1 << 63) <= n < 1 << 63
        ), n


def test_keys_and_values_are_read_from_one_snapshot() -> None:
    """Keys and values are read in two passes: a mapping that changes between them (here on
    every iteration) must not pair a key with another key's value."""
    from collections.abc import Mapping

    states = [{"a": 1, "b": "bee"}, {"a": 1, "c": 2.5}]

    class Flipping(Mapping[str, Any]):
        """Changes between two iterations, as another thread could change a dict."""

        def __init__(self) -> None:
            self.state = 0

        def __getitem__(self, key: str) -> Any:
            return states[self.state % 2][key]

        def __iter__(self) -> Any:
            self.state += 1
            return iter(states[self.state % 2])

        def __len__(self) -> int:
            return len(states[self.state % 2])

        def values(self) -> Any:
            return states[self.state % 2].values()

    tag = b"\x32"
    each = {
        tuple(state): _otlp_encode._each(
            _otlp_encode._tag_cache(tag), tag, state.items(), frozenset(), False
        )
        for state in states
    }
    for _ in range(4):
        assert _otlp_encode._attributes(tag, Flipping()) in each.values()


def test_long_values_and_odd_layouts_are_not_held(encoder: str) -> None:
    """Runs holding a field over 512 bytes are encoded each time, as such fields are; layouts
    with many fields, long keys or keys that are not exactly str are not held either (a
    str-enum key's layout would stand for the plain str layout, equal keys alike)."""
    from kiki_otel._logging import _RECORD_FIELDS
    from kiki_otel._otlp_encode import encode_log_event

    class Field(enum.StrEnum):
        USER = "user"

    record = _logs()[0]
    layouts: list[dict[Any, Any]] = [
        {"route": "/a", "sql": "x" * 600},
        {f"k{i}": "v" for i in range(60)},
        {"k" * 200: "v", "route": "/a"},
        {Field.USER: "u", "route": "/a"},
    ]
    for _ in range(3):
        for attributes in layouts:
            record.log_record.attributes = attributes
            assert encode_logs([record]) == official_logs([record]).SerializeToString()
    if encoder == "python":
        shapes = _otlp_encode._field_cache[b"\x32"].shapes
        assert [list(layout[0]) for layout in shapes] == [["route", "sql"]]
        assert not next(iter(shapes.values())).blocks  # the 600-byte value: no run kept
    _assert_counted()
    resource, scope = Resource({"service.name": "svc"}), InstrumentationScope("kiki_otel.x")
    fields, ids = (1, SeverityNumber.INFO, "INFO", "e"), (0, 0, 0, resource, scope)
    enum_event = {Field.USER: "u", "route": "/a", "event": "e"}
    assert encode_log_event(*fields, enum_event, _RECORD_FIELDS, *ids) is None  # converted
    plain = encode_log_event(
        *fields, {"user": "u", "route": "/a", "event": "e"}, _RECORD_FIELDS, *ids
    )
    assert plain is not None  # the plain layout is still encoded directly


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16383, 16384, 70000])
def test_each_item_is_one_length_delimited_field(size: int) -> None:
    """Items of every length class (one varint byte, two built inline, three or more) are
    framed as protobuf reads a length-delimited field (its own varint decoder), and the
    same as the general varint framing."""
    from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]

    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    item = _otlp_encode.Encoded(payload, None, None)
    framed = _otlp_encode._encode_each([item, item], lambda _: b"", b"\x12")
    assert framed[:1] == b"\x12"
    length, start = _DecodeVarint(framed, 1)
    assert length == size and framed[start : start + size] == payload
    assert framed == (b"\x12" + _otlp_encode._varint(size) + payload) * 2


def test_the_c_encoder_is_built_where_a_compiler_is() -> None:
    """The C encoder: the install built it (setup.py's optional extension) when it could: a silent
    pure-Python fallback on a machine with a compiler would hide a broken build."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the pure-Python encoder is expected")
    # (built, whether or not KIKI_OTEL_NO_SPEEDUPS switched it off for this run)
    assert importlib.util.find_spec("kiki_otel._speedups") is not None
