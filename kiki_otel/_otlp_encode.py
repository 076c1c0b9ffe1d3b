"""OTLP protobuf wire format for spans and log records, written directly (no protobuf objects).

It produces the same bytes as ``opentelemetry-exporter-otlp-proto-common``'s encoders
followed by ``SerializeToString()`` (fields in field-number order, proto3 defaults left out,
``oneof`` and sub-message fields present when the official encoder sets them), which the
tests prove byte for byte. It is faster because it builds ``bytes`` with no intermediate
message objects, encodes a resource and a scope once per batch, and caches encoded
attributes that repeat (method, route, status code, host...) across spans and batches.

Field numbers are from opentelemetry-proto (``trace/v1/trace.proto``, ``logs/v1/logs.proto``,
``common/v1/common.proto``, ``resource/v1/resource.proto``).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from opentelemetry.trace import SpanContext
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status

from ._context import SPAN_CONTEXT_TUPLE
from ._native import new_tuple, speedups
from ._ratelimit import Throttle

_native: Any = speedups  # the C module, or None (built without it, or switched off)
_native_fields = _native.encode_fields if _native is not None else None
_native_span = _native.encode_span if _native is not None else None
_native_log_event = _native.encode_log_event if _native is not None else None
_native_frame = _native.frame_items if _native is not None else None
native_json_line = _native.json_line if _native is not None else None
"""``orjson.dumps`` of a dict of plain items in C (None for any other), or None without
the C module: the access line's JSON, written beside its record (``_access_log``)."""
native_log_event = _native_log_event
""":func:`encode_log_event`'s C case, for a caller holding the record's :func:`log_head`
(the access line's record: one call instead of three frames), or None without the C
module. The payload of an :class:`Encoded`, or None when a field is not plain."""

__all__ = [
    "NATIVE_SDK_SPAN",
    "Encoded",
    "encode_log",
    "encode_log_event",
    "encode_logs",
    "encode_span",
    "encode_spans",
]

_logger = logging.getLogger(__name__)

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SMALL = [bytes((n,)) for n in range(128)]

_SLICE_SECONDS = 0.001
"""Encoding time between two GIL hand-overs (see :func:`_encode_each`)."""
_SCALARS = frozenset({str, int, bool, float, type(None)})
_KEYS_MAX = 1024
"""Attribute keys per field tag that get a value cache; keys beyond it encode uncached."""
_VALUES_MAX = 256
"""Distinct values cached per key; a key that sees more is unbounded (an id, a duration):
it stops caching, as a miss costs more than encoding and would only churn memory."""
_CACHED_MAX = 8192
"""Cached fields in all (a soft bound, counted without a lock): with ``_FIELD_BYTES_MAX``
it keeps the worst case to a few MB whatever attributes an application logs."""
_FIELD_BYTES_MAX = 512
"""Longer fields are encoded each time, never cached (rarely repeated, costly to hold)."""
_SHAPES_MAX = 128
"""Attribute layouts remembered per field tag; a layout beyond them encodes field by field."""
_SHAPE_FIELDS_MAX = 48
_SHAPE_KEY_MAX = 100
"""Layouts with more fields, or a longer key, encode field by field (never held)."""
_BLOCKS_MAX = 128
"""Encoded runs of fields per layout (distinct combinations of its cacheable values)."""
_BLOCK_BYTES_MAX = 1024
"""Longer runs, and runs with a field over ``_FIELD_BYTES_MAX``, are never cached."""
_BLOCKS_CACHED_MAX = 1024
"""Cached runs in all (soft, like ``_CACHED_MAX``): with the two bounds above, ~2 MB at
most (a run's key holds its values, each under ``_FIELD_BYTES_MAX``)."""
_cached = [0]
"""Cached fields in all tag caches (the soft bound ``_CACHED_MAX``)."""
_blocks_cached = [0]
"""Cached runs in all layouts (the soft bound ``_BLOCKS_CACHED_MAX``)."""
_NO_SKIP: frozenset[str] = frozenset()


class _KeyFields:
    """One attribute key under one field tag: its encoded ``key``, its cached values.

    ``count`` values of it are cached; ``closed`` once it has seen too many (an unbounded
    key, as an id or a duration).
    """

    __slots__ = ("closed", "count", "head")

    def __init__(self, key: str) -> None:
        self.head = _ld(b"\x0a", _utf8(key)) if key else b""
        self.count = 0
        self.closed = False


class _TagCache:
    """The encoded attribute fields of one field tag (span, log, resource... attributes).

    ``fields`` maps ``(key, value)`` for str and int values (never equal to each other)
    and ``(key, type, value)`` for bools and None (True, 1 and 1.0 are equal in a dict, not
    on the wire) to the whole field: tag, length, ``KeyValue``. A repeated attribute then
    costs one tuple and one lookup. ``keys`` keeps the per-key bounds. ``shapes`` holds the
    layouts seen (:class:`_Shape`), valid while ``version`` (bumped when a key closes)
    is the one they were made at.
    """

    __slots__ = ("fields", "keys", "shapes", "version")

    def __init__(self) -> None:
        self.keys: dict[str, _KeyFields] = {}
        self.fields: dict[tuple[Any, ...], bytes] = {}
        self.shapes: dict[tuple[Any, ...], _Shape] = {}
        self.version = 0


class _Shape:
    """One attribute layout: its keys in order, the exact type of each value.

    A service encodes the same few layouts over and over (a route's span attributes, the
    access line's fields), and most of their values repeat too. Looked up per field, a
    layout of ten cached attributes still cost ten tuples, lookups and appends. A shape
    splits its fields once: *fixed* ones (a str, int, bool or None under a key that still
    caches) and *varying* ones (floats, ids and other keys that stopped caching, sequences,
    keys the cache has no room for). The fixed values, picked out in C by an
    ``itemgetter``, key ``blocks``: the encoded runs of fixed fields between the varying
    ones. A repeated layout then costs a few C calls and one lookup, plus the varying
    fields. The exact types are part of the layout, so equal values of different types
    (True, 1) never share a block.

    ``plain`` is False when a field is not a plain attribute (see :func:`_fields`).
    ``blocks`` is None once it holds ``_BLOCKS_MAX`` runs: the values of such a layout do
    not repeat enough, and its fields are encoded one by one.
    """

    __slots__ = ("blocks", "pick", "plain", "runs", "varying", "version")

    def __init__(
        self, cache: _TagCache, keys: tuple[Any, ...], types: tuple[type, ...], skip: frozenset[str]
    ) -> None:
        self.version = cache.version
        self.plain = True
        fixed: list[int] = []
        run: list[tuple[int, str]] = []
        runs: list[list[tuple[int, str]]] = [run]
        varying: list[tuple[int, Any, bytes | None]] = []
        entries = cache.keys
        for index, (key, kind) in enumerate(zip(keys, types, strict=True)):
            if key in skip:
                continue
            scalar = type(key) is str and key != "" and kind in _SCALARS
            self.plain = self.plain and scalar
            entry = entries.get(key) if scalar else None
            if entry is None and scalar and len(entries) < _KEYS_MAX:
                entry = entries.setdefault(key, _KeyFields(key))
            if entry is None or entry.closed or kind is float:
                # A closed key's str, a float: encoded each time from the key's encoding
                # (a closed key never opens again); the rest through :func:`_field`.
                head = entry.head if entry is not None and kind in (str, float) else None
                varying.append((index, key, head))
                run = []
                runs.append(run)
            else:
                fixed.append(index)
                run.append((index, key))
        self.varying = tuple(varying)
        self.runs = runs
        if len(fixed) > 1:
            self.pick: Callable[[tuple[Any, ...]], Any] = itemgetter(*fixed)
        elif fixed:
            self.pick = itemgetter(fixed[0])
        else:
            self.pick = _nothing
        self.blocks: dict[Any, Any] | None = {}


def _nothing(_values: tuple[Any, ...]) -> tuple[()]:
    return ()


_field_cache: dict[bytes, _TagCache] = {}
"""Field tag -> :class:`_TagCache`, for scalar values (repeating method, route, status,
host... cost one dict lookup each)."""


def _utf8(text: str) -> bytes:
    """UTF-8 of ``text``, a lone surrogate written as its backslash escape.

    A lone surrogate (U+D800 to U+DFFF unpaired, as a JSON body can carry) is invalid in
    UTF-8 and so in protobuf strings: it must not fail the record, nor the batch it is in.
    """
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


_TEXT_FIELDS_MAX = 1024
_text_fields: dict[tuple[bytes, str], bytes] = {}
"""(tag, text) -> the whole field, for strings that repeat: span names (one per route and
method), log bodies (event names), severity texts. Filled until full, never cleared."""


_log_heads: dict[tuple[Any, str, str], bytes] = {}
"""(severity number, severity text, body) -> their three fields in a log record, for the
records kiki emits directly (:func:`_emitted`). Bounded as ``_text_fields``."""


def _text_field(tag: bytes, text: str) -> bytes:
    """``tag``, length and the UTF-8 of ``text``: one lookup when ``text`` repeats."""
    field = _text_fields.get((tag, text))
    if field is None:
        field = _ld(tag, _utf8(text))
        if len(_text_fields) < _TEXT_FIELDS_MAX and len(field) <= _FIELD_BYTES_MAX:
            _text_fields[(tag, text)] = field
    return field


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value] if value >= 0 else _varint(value & 0xFFFFFFFFFFFFFFFF)
    out = bytearray()
    while value > 127:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoded(NamedTuple):
    """One span or log record already in its wire form, waiting in a batch queue.

    kiki's direct paths encode the request span when it ends and the log record when it is
    emitted, on the request's thread, while their data is still in the CPU cache (encoding
    the same span later on the exporter thread, cold, cost ~2x). More important is what the
    queue then holds: one small object instead of the ~10 GC-tracked objects of an SDK span.
    Queued items outlive young-generation collections and get promoted; enough promotions
    trigger a full collection of the whole heap (~30-55 ms measured in the benchmark
    service): that was the p99. The export request groups these by resource and scope like
    any other item and copies the payload in as is: the same bytes.

    A named tuple, made on the hot paths with ``_native.new_tuple``: no Python frame to
    build one (its constructor is Python code), and its fields are read in C.
    """

    payload: bytes
    resource: Any
    instrumentation_scope: Any


def _encode_each(items: Sequence[Any], encode: Any, tag: bytes) -> bytes:
    """``encode`` each item as a ``tag`` field, letting other threads run every ~1 ms.

    Encoding runs on an exporter thread; 512 SDK spans (not encoded when they ended) are
    ~5-8 ms of pure Python that would otherwise hold the GIL for whole switch intervals
    (5 ms), stalling the event loop. ``time.sleep(0)`` releases the GIL, so a waiting
    request handler gets it within ~``_SLICE_SECONDS``. Time-sliced, not counted: a
    hand-over costs far more than its syscall (the encoder then waits up to a switch
    interval for the GIL, and the two threads interleave mid-burst: ~+30 us a request
    in-process when slicing every 32 items), so a batch of items encoded when they ended
    (512 in ~0.3 ms) goes in one piece.
    """
    if _native_frame is not None:  # Encoded items (the direct paths'): in one C call
        framed: bytes | None = _native_frame(items, tag, Encoded)
        if framed is not None:
            return framed
    out: list[bytes] = []
    append = out.append
    clock = time.perf_counter
    deadline = clock() + _SLICE_SECONDS
    for index, item in enumerate(items):
        payload = item.payload if type(item) is Encoded else encode(item)
        size = len(payload)
        append(tag)  # three parts joined once below: no intermediate copies of the payload
        if size < 128:
            append(_SMALL[size])
        elif size < 16384:  # a span or record: two varint bytes, no call
            append(bytes(((size & 0x7F) | 0x80, size >> 7)))
        else:
            append(_varint(size))
        append(payload)
        if not index & 15 and index and clock() > deadline:
            time.sleep(0)
            deadline = clock() + _SLICE_SECONDS
    return b"".join(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    size = len(payload)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:
    """The body of an ``AnyValue``; ``None`` is the empty message.

    Fields: 1 string, 2 bool, 3 int, 4 double, 5 array, 6 kvlist, 7 bytes. Raises on a value
    protobuf would reject (an int beyond int64, an unknown type).
    """
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    if isinstance(value, str):
        return _ld(b"\x0a", _utf8(value))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _ld(b"\x3a", value)
    if isinstance(value, Sequence):
        return _ld(b"\x2a", b"".join([_ld(b"\x0a", _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        items = [_ld(b"\x0a", _key_value(str(k), v)) for k, v in value.items()]
        return _ld(b"\x32", b"".join(items))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    """The body of a ``KeyValue`` (1 key, 2 value; the value is always present)."""
    head = _ld(b"\x0a", _utf8(key)) if key else b""
    return head + _ld(b"\x12", _any_value(value))


def _tag_cache(tag: bytes) -> _TagCache:
    cache = _field_cache.get(tag)
    if cache is None:
        cache = _field_cache.setdefault(tag, _TagCache())
    return cache


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` fields; a value protobuf would reject is logged and skipped."""
    # BoundedAttributes' Mapping methods (its len() too) are Python: read its dict directly.
    inner = getattr(attributes, "_dict", None)
    mapping = inner if type(inner) is dict else attributes
    if not mapping:
        return b""
    return _fields(tag, mapping, _NO_SKIP, False) or b""


def _fields(
    tag: bytes, mapping: Mapping[Any, Any], skip: frozenset[str], strict: bool
) -> bytes | None:
    """The fields of ``mapping`` but ``skip``, in order, through its layout's blocks.

    Strict: None when a field is not a plain attribute (a key that is not a non-empty str,
    a value that is not str/bool/int/float/None, an int beyond 64 bits), for the caller to
    convert. Otherwise such a field is encoded as ``AnyValue``, or reported and dropped.
    """
    if _native_fields is not None and type(mapping) is dict:
        native: bytes | None = _native_fields(tag, mapping, skip)
        if native is not None:
            return native
    cache = _field_cache.get(tag) or _tag_cache(tag)
    # Keys and values are read in two passes: from a copy, so that a mapping another
    # thread changes between them cannot pair a key with another key's value.
    mapping = mapping.copy() if type(mapping) is dict else dict(mapping)
    values = tuple(mapping.values())
    types = tuple(map(type, values))
    layout = (tuple(mapping), types, skip)
    shape = cache.shapes.get(layout)
    if shape is None or shape.version != cache.version:
        shape = _new_shape(cache, layout)
        if shape is None:  # not a layout to hold (too many, too long, non-str keys)
            return _each(cache, tag, mapping.items(), skip, strict)
    if not shape.plain and strict:
        return None
    blocks = shape.blocks
    if blocks is None:
        return _each(cache, tag, mapping.items(), skip, strict)
    picked = shape.pick(values)
    block = blocks.get(picked)
    if block is None:
        block = _fill(cache, tag, shape, values, picked)
        if block is None:  # a fixed value protobuf rejects: field by field, as it says
            return _each(cache, tag, mapping.items(), skip, strict)
    varying = shape.varying
    if not varying:
        return block  # type: ignore[no-any-return]
    out = [block[0]]
    append = out.append
    cached = cache.fields.get
    for position, (index, key, head) in enumerate(varying, 1):
        value = values[index]
        kind = types[index]
        field: bytes | None = None
        if head is not None:
            field = _unbounded(tag, head, value, kind)
        elif kind is str or kind is int:
            field = cached((key, value))
        if field is None:
            try:
                field = _field(cache, tag, key, value, kind)
            except Exception as error:
                if strict:
                    return None
                _dropped(key, error)
                field = b""
        append(field)
        append(block[position])
    return b"".join(out)


def _new_shape(cache: _TagCache, layout: tuple[Any, ...]) -> _Shape | None:
    """The layout's shape, remembered; None for a layout not to hold.

    Not held: past ``_SHAPES_MAX`` layouts, long layouts and keys (a key per id, say), and
    keys that are not exactly str. Layouts compare keys by equality, and a str-enum key's
    layout (never plain) would then stand for the plain str one too.
    """
    keys, _types, skip = layout
    shapes = cache.shapes
    old = shapes.pop(layout, None)
    if old is not None and old.blocks:
        _blocks_cached[0] -= len(old.blocks)
    if (
        len(shapes) >= _SHAPES_MAX
        or len(keys) > _SHAPE_FIELDS_MAX
        or not all(type(key) is str and len(key) <= _SHAPE_KEY_MAX for key in keys)
    ):
        return None
    shape = _Shape(cache, keys, _types, skip)
    shapes[layout] = shape
    return shape


def _fill(cache: _TagCache, tag: bytes, shape: _Shape, values: tuple[Any, ...], picked: Any) -> Any:
    """Encode the shape's runs of fixed fields for these values, and keep them if there is room.

    One bytes when the shape has no varying field, else a tuple with a run before, between
    and after them. None when a value is one protobuf rejects.
    """
    runs = []
    longest = 0
    for run in shape.runs:
        try:
            fields = [_field(cache, tag, key, values[i], type(values[i])) for i, key in run]
        except Exception:
            return None
        longest = max(longest, *map(len, fields)) if fields else longest
        runs.append(b"".join(fields))
    block: Any = runs[0] if len(runs) == 1 else tuple(runs)
    blocks = shape.blocks
    if blocks is not None:
        if len(blocks) >= _BLOCKS_MAX:
            shape.blocks = None
            _blocks_cached[0] -= len(blocks)
        elif (
            longest <= _FIELD_BYTES_MAX
            and sum(map(len, runs)) <= _BLOCK_BYTES_MAX
            and _blocks_cached[0] < _BLOCKS_CACHED_MAX
        ):
            blocks[picked] = block
            _blocks_cached[0] += 1
    return block


def _each(
    cache: _TagCache, tag: bytes, items: Any, skip: frozenset[str], strict: bool
) -> bytes | None:
    """Field by field, for the layouts without a shape (see :func:`_fields`)."""
    out: list[bytes] = []
    append = out.append
    cached = cache.fields.get
    for key, value in items:
        if key in skip:
            continue
        kind = type(value)
        if kind is str or kind is int:  # a cached value (so a non-empty str key): one lookup
            field = cached((key, value))
            if field is not None:
                append(field)
                continue
        elif strict and kind not in _SCALARS:
            return None
        if strict and (type(key) is not str or not key):
            return None
        try:
            append(_field(cache, tag, key, value, kind))
        except Exception as error:
            if strict:
                return None
            _dropped(key, error)
    return b"".join(out)


_drops = Throttle(60.0, max_keys=_KEYS_MAX)
"""Dropped attributes, reported once a minute per key."""


def _dropped(key: Any, error: Exception) -> None:
    """Report an attribute protobuf cannot take (an int beyond 64 bits, say).

    It is dropped from its span or record; reported once a minute per key, with the count,
    not with a traceback per span.
    """
    held = _drops.due(key)
    if held is not None:
        _logger.warning(
            "Attribute %r dropped: %s (%d more since the last report)", key, error, held
        )


def _field(cache: _TagCache, tag: bytes, key: Any, value: Any, kind: type) -> bytes:
    """One ``KeyValue`` field (tag, length, body), from ``cache`` or encoded.

    Cached when its key still caches. Raises on a value protobuf would reject.
    """
    keys = cache.keys
    entry = keys.get(key) if kind in _SCALARS else None
    if entry is None and kind in _SCALARS and type(key) is str and key and len(keys) < _KEYS_MAX:
        entry = keys.setdefault(key, _KeyFields(key))
    if entry is None:
        return _ld(tag, _key_value(key, value))
    if entry.closed or kind is float:
        # An unbounded key (an id, a duration), or a float: encoded each time. Floats are
        # never cached: 0.0 and -0.0 (and NaNs) are one dict key, two different doubles.
        return _unbounded(tag, entry.head, value, kind)
    cache_key = (key, value) if kind is str or kind is int else (key, kind, value)
    field = cache.fields.get(cache_key)  # bools and None are looked up here
    if field is None:
        field = _unbounded(tag, entry.head, value, kind)
        if entry.count >= _VALUES_MAX:
            _close(cache, key, entry)
        elif len(field) <= _FIELD_BYTES_MAX and _cached[0] < _CACHED_MAX:
            cache.fields[cache_key] = field
            entry.count += 1
            _cached[0] += 1
    return field


def _unbounded(tag: bytes, head: bytes, value: Any, kind: type) -> bytes:
    """The field of a key encoded each time (``head`` is its encoded key), as ``_ld``.

    Short strs and floats are framed in one join, without further calls: the values of
    unbounded keys (ids, paths, durations, timestamps) are encoded on every record.
    """
    if kind is str:
        try:
            data: bytes = value.encode()
        except UnicodeEncodeError:
            data = _utf8(value)
        size = len(data)
        if size >= 126:  # the AnyValue's one-byte length (string tag, length, bytes) is full
            value_field = _ld(b"\x12", _ld(b"\x0a", data))
        else:
            # the AnyValue (tag, length) holding the string (tag, length, bytes)
            any_value = (b"\x12", _SMALL[size + 2], b"\x0a", _SMALL[size], data)
            total = len(head) + size + 4
            if total < 128:
                return b"".join((tag, _SMALL[total], head, *any_value))
            value_field = b"".join(any_value)
    elif kind is float:
        total = len(head) + 11  # + the AnyValue's tag, length, the double's tag, 8 bytes
        if total < 128:
            return b"".join((tag, _SMALL[total], head, b"\x12\x09\x21", _pack_double(value)))
        value_field = b"\x12\x09\x21" + _pack_double(value)
    else:
        value_field = _ld(b"\x12", _any_value(value))  # a KeyValue's field 2 (the AnyValue)
    body = head + value_field
    size = len(body)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + body


def _close(cache: _TagCache, key: str, entry: _KeyFields) -> None:
    """Stop caching ``key`` (unbounded: a miss costs more than encoding), free its room.

    Once per key; ``list()`` snapshots the dict, as other threads encode too.
    """
    entry.closed, entry.count = True, 0
    cache.version += 1  # the shapes that cache this key's values are rebuilt without it
    fields = cache.fields
    for cache_key in list(fields):
        if cache_key[0] == key and fields.pop(cache_key, None) is not None:
            _cached[0] -= 1


def _resource(resource: Any) -> bytes:
    """A ``Resource`` (1 attributes), as the field 1 of ResourceSpans/ResourceLogs."""
    return _ld(b"\x0a", _attributes(b"\x0a", resource.attributes))


def _scope(scope: Any) -> bytes:
    """An ``InstrumentationScope`` (1 name, 2 version, 3 attributes), as field 1.

    Always present in ScopeSpans/ScopeLogs (empty when there is no scope).
    """
    if scope is None:
        return b"\x0a\x00"
    body = b""
    if scope.name:
        body += _ld(b"\x0a", _utf8(scope.name))
    if scope.version:
        body += _ld(b"\x12", _utf8(scope.version))
    body += _attributes(b"\x1a", scope.attributes)
    return _ld(b"\x0a", body)


_RESOURCE_OF = attrgetter("resource")
_SCOPE_OF = attrgetter("instrumentation_scope")


def _group(items: Sequence[Any]) -> list[tuple[Any, list[tuple[Any, list[Any]]]]]:
    """Items grouped by resource, then scope, in first-seen order (as the official encoder).

    Grouped by identity first (SDK objects are shared), then equal ones are merged. A
    batch of one resource and one scope (one provider, one tracer or logger: the usual
    batch) is seen as such in C, without the loop.
    """
    if items:
        first = items[0]
        scope = first.instrumentation_scope
        if (
            scope
            and len(set(map(id, map(_RESOURCE_OF, items)))) == 1
            and len(set(map(id, map(_SCOPE_OF, items)))) == 1
        ):
            return [(first.resource, [(scope, list(items))])]
    by_id: dict[tuple[int, int], list[Any]] = {}
    firsts: dict[tuple[int, int], Any] = {}
    for item in items:
        scope = item.instrumentation_scope or None
        key = (id(item.resource), id(scope))
        bucket = by_id.get(key)
        if bucket is None:
            by_id[key] = bucket = []
            firsts[key] = item
        bucket.append(item)
    resources: dict[Any, dict[Any, list[Any]]] = {}
    for key, bucket in by_id.items():
        first = firsts[key]
        scopes = resources.setdefault(first.resource, {})
        scopes.setdefault(first.instrumentation_scope or None, []).extend(bucket)
    return [(resource, list(scopes.items())) for resource, scopes in resources.items()]


# ----------------------------------------------------------------------------- spans


def _span_flags(parent: Any) -> bytes:
    # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100), | IS_REMOTE (0x200) for a remote parent.
    return b"\x00\x03\x00\x00" if parent is not None and parent.is_remote else b"\x00\x01\x00\x00"


_TUPLE_CONTEXT = SpanContext if SPAN_CONTEXT_TUPLE else None
"""The span context type whose fields are read by position (its properties are Python
calls, ~10 a span): see ``_context.SPAN_CONTEXT_TUPLE``."""


def _sdk_span_types() -> tuple[type, ...]:
    """The SDK span classes whose fields :func:`_span` may read directly, or ``()``.

    Their properties copy on every read (``events``/``links`` copy a deque under a lock,
    ``attributes`` wraps a proxy, the ``dropped_*`` counts ``isinstance``): ~1.5 us a span.
    Only the exact classes (a subclass may override a property), and only when an SDK
    span still has the fields read here (a release that renames one keeps the properties).
    """
    try:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import ReadableSpan, _Span
        from opentelemetry.sdk.util import BoundedList

        fields = vars(ReadableSpan(name="probe", events=(), links=()))
        needed = {"_context", "_parent", "_name", "_kind", "_start_time", "_end_time"}
        needed |= {"_resource", "_instrumentation_scope"}
        if not needed | {"_attributes", "_events", "_links", "_status"} <= fields.keys():
            return ()
        if not hasattr(BoundedList(1), "_dq") or not hasattr(BoundedAttributes(), "dropped"):
            return ()
    except (ImportError, TypeError, AttributeError):  # pragma: no cover - another SDK shape
        return ()
    return (ReadableSpan, _Span)


_SDK_SPAN_TYPES = _sdk_span_types()


def _native_sdk_span_types() -> tuple[Any, ...] | None:
    """The types ``_speedups.sdk_span`` checks a span's fields against, or None (no C path).

    The enums' members in value order, so C finds a member's value by identity (an enum's
    ``__hash__`` is Python code): only while their values are 0, 1, 2...
    """
    if _native is None or not _SDK_SPAN_TYPES or _TUPLE_CONTEXT is None:
        return None
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.util import BoundedList
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.status import StatusCode

    kinds = tuple(sorted(SpanKind, key=lambda kind: kind.value))
    codes = tuple(sorted(StatusCode, key=lambda code: code.value))
    if [kind.value for kind in kinds] != list(range(len(kinds))) or [
        code.value for code in codes
    ] != list(range(len(codes))):
        return None  # pragma: no cover - another API shape
    return (
        _TUPLE_CONTEXT,
        BoundedAttributes,
        BoundedList,
        Status,
        DEFAULT_TRACE_STATE,
        Encoded,
        kinds,
        codes,
    )


def _bounded(items: Any) -> tuple[Any, int]:
    """The items of an SDK ``BoundedList`` (or any sequence) and its dropped count."""
    dq = getattr(items, "_dq", None)
    if dq is not None:  # an ended span's list: no more appends, no copy needed
        return dq, items.dropped
    return items or (), 0


def _span(span: Any) -> bytes:
    if type(span) in _SDK_SPAN_TYPES:
        # The fields behind the properties, read as attributes: not through ``__dict__``,
        # which would make a dict of an instance that keeps its class's shared-key layout.
        attributes = span._attributes
        # BoundedAttributes' Mapping methods go through the ABC: hand its dict over.
        inner = getattr(attributes, "_dict", None)
        events, dropped_events = _bounded(span._events)
        links, dropped_links = _bounded(span._links)
        return _span_body(
            span._context,
            span._parent,
            span._name,
            span._kind,
            span._start_time,
            span._end_time,
            inner if type(inner) is dict else attributes,
            getattr(attributes, "dropped", 0),
            events,
            dropped_events,
            links,
            dropped_links,
            span._status,
        )
    return _span_body(
        span.context,
        span.parent,
        span.name,
        span.kind,
        span.start_time,
        span.end_time,
        span.attributes,
        span.dropped_attributes,
        span.events,
        span.dropped_events,
        span.links,
        span.dropped_links,
        span.status,
    )


def _span_body(
    context: Any,
    parent: Any,
    name: str,
    kind: Any,
    start_time: int | None,
    end_time: int | None,
    attributes: Any,
    dropped_attributes: int,
    events: Any,
    dropped_events: int,
    links: Any,
    dropped_links: int,
    status: Any,
) -> bytes:
    if type(context) is _TUPLE_CONTEXT:
        trace_id, span_id, _remote, _flags, state, _valid = context
        if (
            _native_span is not None
            and state is DEFAULT_TRACE_STATE
            and not (events or links or dropped_attributes or dropped_events or dropped_links)
            and type(attributes) is dict
            and type(status) is Status
            and (parent is None or type(parent) is _TUPLE_CONTEXT)
        ):
            # The request span's case, in C; None when a value is not plain.
            native: bytes | None = _native_span(
                trace_id,
                span_id,
                parent[1] if parent is not None else None,
                parent is not None and parent[2],
                name,
                kind._value_ + 1,
                start_time,
                end_time,
                attributes,
                status._status_code._value_,
                status._description,
            )
            if native is not None:
                return native
    else:
        trace_id, span_id, state = context.trace_id, context.span_id, context.trace_state
    parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
    if state is not DEFAULT_TRACE_STATE and state:
        parts.append(_ld(b"\x1a", _utf8(",".join(f"{k}={v}" for k, v in state.items()))))
    if parent is None:
        flags = b"\x00\x01\x00\x00"
    elif type(parent) is _TUPLE_CONTEXT:
        flags = b"\x00\x03\x00\x00" if parent[2] else b"\x00\x01\x00\x00"  # is_remote
        parts.append(b"\x22\x08")
        parts.append(parent[1].to_bytes(8, "big"))  # span_id
    else:
        flags = _span_flags(parent)
        if parent:
            parts.append(b"\x22\x08")
            parts.append(parent.span_id.to_bytes(8, "big"))
    if name:
        parts.append(_text_field(b"\x2a", name))
    parts.append(b"\x30")
    parts.append(_SMALL[kind._value_ + 1])  # SDK SpanKind is the proto enum minus one
    if start_time:
        parts.append(b"\x39" + _pack_fixed64(start_time))
    if end_time:
        parts.append(b"\x41" + _pack_fixed64(end_time))
    parts.append(_attributes(b"\x4a", attributes))
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    for event in events:
        body = b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _ld(b"\x12", _utf8(event.name))
        body += _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_ld(b"\x5a", body))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    for link in links:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        body += _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + _span_flags(link.context)
        parts.append(_ld(b"\x6a", body))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    parts.append(_status(status))
    parts.append(b"\x85\x01")  # field 16 (flags), fixed32
    parts.append(flags)
    return b"".join(parts)


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    if type(status) is Status:  # its fields: the properties are Python calls
        description, status_code = status._description, status._status_code
    else:
        description, status_code = status.description, status.status_code
    body = b""
    if description:
        body += _ld(b"\x12", _utf8(description))
    code = status_code._value_  # an enum's plain attribute; .value is a property
    if code:
        body += b"\x18" + _SMALL[code]
    return _ld(b"\x7a", body)


def _export_request(items: Sequence[Any], encode_item: Callable[[Any], bytes]) -> bytes:
    """The shared shape of OTLP export requests: resource -> scope -> items (field 2 each).

    Built as one list of parts, each length prefix computed from its parts' sizes, and
    joined once: the framed items are copied once more, not once per level. A request is
    ~100-200 KB, and each copy streams it through the L2 cache the request thread shares
    when the server has one core (sixteenth round: five copies were ~60 L2 misses a
    request in `memcpy` alone).
    """
    parts: list[bytes] = []
    for resource, scopes in _group(items):
        at = len(parts)
        field = _resource(resource)
        parts += (b"", field)  # the resource's tag and length, once its size is known
        size = len(field)
        for scope, scope_items in scopes:
            field = _scope(scope)
            framed = _encode_each(scope_items, encode_item, b"\x12")
            schema = b""
            if scope is not None and scope.schema_url:
                schema = _ld(b"\x1a", _utf8(scope.schema_url))
            inner = len(field) + len(framed) + len(schema)
            head = b"\x12" + _varint(inner)
            parts += (head, field, framed, schema)
            size += len(head) + inner
        if resource.schema_url:
            schema = _ld(b"\x1a", _utf8(resource.schema_url))
            parts.append(schema)
            size += len(schema)
        parts[at] = b"\x0a" + _varint(size)
    return b"".join(parts)


def encode_span(span: Any) -> Encoded:
    """An ended span (SDK ``ReadableSpan``), encoded now for a later :func:`encode_spans`."""
    if type(span) in _SDK_SPAN_TYPES:  # the fields behind the two properties
        if NATIVE_SDK_SPAN is not None:  # the request span's case: one C call, no frames
            item = _native_sdk_span(
                span._context,
                span._parent,
                span._name,
                span._kind,
                span._start_time,
                span._end_time,
                span._attributes,
                span._events,
                span._links,
                span._status,
                span._resource,
                span._instrumentation_scope,
                NATIVE_SDK_SPAN,
            )
            if item is not None:
                return item  # type: ignore[no-any-return]
        return new_tuple(  # type: ignore[no-any-return]
            Encoded, _span(span), span._resource, span._instrumentation_scope
        )
    return Encoded(_span(span), span.resource, span.instrumentation_scope)


NATIVE_SDK_SPAN = _native_sdk_span_types()
"""The classes and members ``_speedups.sdk_span`` checks a span's fields against (None: no
C module, or an SDK whose shapes it does not know; then spans are encoded in Python)."""
_native_sdk_span: Any = _native.sdk_span if NATIVE_SDK_SPAN is not None else None


def encode_spans(spans: Sequence[Any]) -> bytes:
    """An ``ExportTraceServiceRequest`` for these SDK ``ReadableSpan`` objects."""
    return _export_request(spans, _span)


# ----------------------------------------------------------------------------- logs


def _log(readable: Any) -> bytes:
    record = readable.log_record
    return _log_fields(
        record.timestamp,
        record.observed_timestamp,
        record.severity_number,
        record.severity_text,
        record.body,
        _attributes(b"\x32", record.attributes),
        readable.dropped_attributes,
        record.trace_flags,
        record.trace_id,
        record.span_id,
        record.event_name,
    )


def _log_fields(
    timestamp: int | None,
    observed_timestamp: int | None,
    severity_number: Any,
    severity_text: str | None,
    body: Any,
    attributes: bytes,
    dropped_attributes: int,
    trace_flags: Any,
    trace_id: int | None,
    span_id: int | None,
    event_name: str | None,
) -> bytes:
    parts = []
    if timestamp:
        parts.append(b"\x09" + _pack_fixed64(timestamp))
    # An enum member's ``_value_`` is a plain attribute; ``value`` is a Python-level property.
    severity = getattr(severity_number, "_value_", None) or getattr(severity_number, "value", None)
    if severity:
        parts.append(b"\x10" + (_SMALL[severity] if 0 < severity < 128 else _varint(severity)))
    if severity_text:
        parts.append(_text_field(b"\x1a", severity_text))
    if type(body) is str:  # the common case: an event name that repeats
        parts.append(_ld(b"\x2a", _text_field(b"\x0a", body)))
    else:
        parts.append(_ld(b"\x2a", _any_value(body)))
    parts.append(attributes)
    if dropped_attributes:
        parts.append(b"\x38" + _varint(dropped_attributes))
    flags = int(trace_flags) if trace_flags is not None else 0
    if flags:
        parts.append(b"\x45" + _pack_fixed32(flags))
    if trace_id:
        parts.append(b"\x4a\x10" + trace_id.to_bytes(16, "big"))
    if span_id:
        parts.append(b"\x52\x08" + span_id.to_bytes(8, "big"))
    if observed_timestamp:
        parts.append(b"\x59" + _pack_fixed64(observed_timestamp))
    if event_name:
        parts.append(_ld(b"\x62", _utf8(event_name)))
    return b"".join(parts)


def encode_log(
    timestamp: int,
    severity_number: Any,
    severity_text: str,
    body: str,
    attributes: Mapping[str, Any],
    trace_id: int,
    span_id: int,
    trace_flags: int,
    resource: Any,
    instrumentation_scope: Any,
) -> Encoded:
    """The log record the SDK's ``Logger.emit`` would make of these fields, encoded now.

    ``attributes`` must hold valid attribute values under non-empty str keys (the caller
    guarantees it); the timestamp is both the event and the observed time, as the SDK sets
    them for a record emitted with a timestamp from the current clock.
    """
    fields = _attributes(b"\x32", attributes)
    return _emitted(
        timestamp,
        severity_number,
        severity_text,
        body,
        fields,
        trace_id,
        span_id,
        trace_flags,
        resource,
        instrumentation_scope,
    )


def encode_log_event(
    timestamp: int,
    severity_number: Any,
    severity_text: str,
    body: str,
    event: Mapping[Any, Any],
    skip: frozenset[str],
    trace_id: int,
    span_id: int,
    trace_flags: int,
    resource: Any,
    instrumentation_scope: Any,
) -> Encoded | None:
    """:func:`encode_log` with an event dict's fields but ``skip`` as the attributes.

    Read and encoded in one pass, in order (no attribute dict in between: the same bytes).
    None when a field is not a plain attribute (a key that is not a non-empty str, a value
    that is not str/bool/int/float/None, an int beyond 64 bits): the caller converts those.
    """
    if _native_log_event is not None and type(event) is dict:
        payload: bytes | None = _native_log_event(
            timestamp,
            _head(severity_number, severity_text, body),
            event,
            skip,
            trace_id,
            span_id,
            trace_flags,
        )
        if payload is not None:
            return new_tuple(Encoded, payload, resource, instrumentation_scope)  # type: ignore[no-any-return]
    fields = _fields(b"\x32", event, skip, True)
    if fields is None:
        return None
    return _emitted(
        timestamp,
        severity_number,
        severity_text,
        body,
        fields,
        trace_id,
        span_id,
        trace_flags,
        resource,
        instrumentation_scope,
    )


def log_head(severity_number: Any, severity_text: str, body: str) -> bytes:
    """The record fields between its time and its attributes (severity, text, a str body)."""
    return _head(severity_number, severity_text, body)


def _head(severity_number: Any, severity_text: str, body: Any) -> bytes:
    """The fields between a record's time and its attributes: severity, its text, the body.

    One per event name and level, cached (a structured body is encoded each time).
    """
    head_key = (severity_number, severity_text, body)
    text_body = type(body) is str
    head = _log_heads.get(head_key) if text_body else None
    if head is None:
        head = _log_fields(None, None, severity_number, severity_text, body, b"", 0, 0, 0, 0, None)
        if text_body and len(_log_heads) < _TEXT_FIELDS_MAX and len(head) <= _FIELD_BYTES_MAX:
            _log_heads[head_key] = head
    return head


def _emitted(
    timestamp: int,
    severity_number: Any,
    severity_text: str,
    body: str,
    attributes: bytes,
    trace_id: int,
    span_id: int,
    trace_flags: int,
    resource: Any,
    instrumentation_scope: Any,
) -> Encoded:
    """A record emitted now: one clock reading is both its time and its observed time.

    The same bytes as :func:`_log_fields` (tested), with the fields between the time and
    the attributes (severity, its text, the body: one per event name and level) cached.
    """
    head = _head(severity_number, severity_text, body)
    time_field = b"\x09" + _pack_fixed64(timestamp) if timestamp else b""
    payload = b"".join(
        (
            time_field,
            head,
            attributes,
            b"\x45" + _pack_fixed32(trace_flags) if trace_flags else b"",
            b"\x4a\x10" + trace_id.to_bytes(16, "big") if trace_id else b"",
            b"\x52\x08" + span_id.to_bytes(8, "big") if span_id else b"",
            b"\x59" + time_field[1:] if timestamp else b"",
        )
    )
    return new_tuple(Encoded, payload, resource, instrumentation_scope)  # type: ignore[no-any-return]


def encode_logs(batch: Sequence[Any]) -> bytes:
    """An ``ExportLogsServiceRequest`` for SDK ``ReadableLogRecord``s / :class:`Encoded`."""
    return _export_request(batch, _log)
