"""The C encoder (``kiki_otel._speedups``) writes the Python encoder's bytes, or hands back.

Each function is compared with the Python path it replaces (``_otlp_encode`` with the C one
switched off) over many generated inputs, including every case it must leave to Python
(None: not plain) and the arguments it must refuse (a clear TypeError, nothing written).
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import random
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import orjson
import pytest
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.status import Status

from kiki_otel import _otlp_encode

if _otlp_encode._native is None:
    pytest.skip(
        "the C encoder is not built here, or KIKI_OTEL_NO_SPEEDUPS is set",
        allow_module_level=True,
    )
speedups = _otlp_encode._native

_TAGS = (b"\x32", b"\x4a", b"\x0a", b"\xfa\x07")


class _Key(StrEnum):
    USER = "user"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    _otlp_encode._field_cache.clear()
    _otlp_encode._cached[0] = _otlp_encode._blocks_cached[0] = 0
    yield
    _otlp_encode._field_cache.clear()
    _otlp_encode._cached[0] = _otlp_encode._blocks_cached[0] = 0


@pytest.fixture
def python_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_otlp_encode`` as it runs without the C module."""
    for name in ("_native_fields", "_native_span", "_native_log_event"):
        monkeypatch.setattr(_otlp_encode, name, None)


def _plain_value(rng: random.Random) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 127, 128, 300, 16383, 16384, (1 << 63) - 1, -(1 << 63)])
    if kind == 3:
        return rng.randrange(-(1 << 63), 1 << 63)
    if kind == 4:
        return rng.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e300])
    if kind == 5:
        return "".join(rng.choice("aé✓🚀x") for _ in range(rng.randrange(0, 140)))
    if kind == 6:
        return "x" * rng.choice([0, 1, 115, 116, 117, 118, 125, 126, 127, 128, 300, 20000])
    return rng.choice(["GET", "/items/{id}", "", "grüße"])


def _odd_value(rng: random.Random) -> Any:
    """A value only the Python encoder takes (sequences, big ints, surrogates, subclasses)."""
    return rng.choice(
        [
            ("a", "b"),
            [1, 2],
            1 << 64,
            -(1 << 63) - 1,
            "lone \ud800 surrogate",
            _Key.USER,
            b"raw",
            {"nested": 1},
            object(),
        ]
    )


def _mapping(rng: random.Random, odd: bool) -> dict[Any, Any]:
    keys = ["http.request.method", "url.path", "k" * rng.randrange(1, 130), "é", "status"]
    mapping: dict[Any, Any] = {}
    for i in range(rng.randrange(0, 12)):
        mapping[f"{rng.choice(keys)}{i}"] = _plain_value(rng)
    if odd:
        position = rng.randrange(len(mapping) + 1)
        items = list(mapping.items())
        key: Any = rng.choice(["odd", "", _Key.USER, 3, "\ud800"])
        items.insert(position, (key, _odd_value(rng) if key == "odd" else "v"))
        mapping = dict(items)
    return mapping


def _python_fields(tag: bytes, mapping: dict[Any, Any], skip: frozenset[str]) -> bytes | None:
    native = _otlp_encode._native_fields
    _otlp_encode._native_fields = None
    try:
        return _otlp_encode._fields(tag, mapping, skip, True)
    finally:
        _otlp_encode._native_fields = native


@pytest.mark.parametrize("seed", range(20))
def test_fields_are_the_python_encoders_bytes(seed: int) -> None:
    """Plain dicts: the same bytes (floats' signed zeros and NaNs, every varint length
    class, multi-byte UTF-8, two-byte tags); not plain: None, where the strict Python
    encoder gives up too."""
    rng = random.Random(seed)
    for _ in range(200):
        odd = rng.random() < 0.3
        mapping = _mapping(rng, odd)
        skip = frozenset(rng.sample(sorted(map(str, mapping)), k=min(2, len(mapping))))
        tag = rng.choice(_TAGS)
        got = speedups.encode_fields(tag, mapping, skip)
        expected = _python_fields(tag, mapping, skip)
        if got is None:
            assert odd, mapping  # a plain dict is always written
        else:
            assert got == expected, mapping


def test_fields_leave_non_dicts_and_odd_items_to_python() -> None:
    """A Mapping that is not a dict (its methods are Python code), and each kind of item
    the Python encoder must check, convert or report."""
    from collections import OrderedDict, UserDict

    skip: frozenset[str] = frozenset()
    assert speedups.encode_fields(b"\x32", UserDict({"a": 1}), skip) is None
    assert speedups.encode_fields(b"\x32", OrderedDict({"a": 1}), skip) is None
    assert speedups.encode_fields(b"\x32", {}, skip) == b""
    for item in (
        {"": "empty key"},
        {3: "int key"},
        {_Key.USER: "str-enum key"},
        {"\ud800": "surrogate key"},
        {"v": "\udfff"},
        {"v": 1 << 63},
        {"v": -(1 << 63) - 1},
        {"v": _Key.USER},
        {"v": ("a",)},
        {"v": b"x"},
    ):
        assert speedups.encode_fields(b"\x32", {"before": 1, **item}, skip) is None, item
    # skipped items are not looked at: the record's own fields may be anything
    assert speedups.encode_fields(b"\x32", {"v": 1 << 70}, frozenset({"v"})) == b""


def test_a_key_whose_hash_runs_python_is_never_hashed() -> None:
    """The skip lookup hashes a key; a key type other than str (whose ``__hash__`` could
    change the dict being read) hands back to Python before that."""
    calls = []

    class Key:
        def __hash__(self) -> int:
            calls.append(1)
            return 1

    mapping: dict[Any, Any] = {"a": 1}
    mapping[Key()] = 2
    calls.clear()
    assert speedups.encode_fields(b"\x32", mapping, frozenset({"x"})) is None
    assert calls == []


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match="takes 3 arguments"):
        speedups.encode_fields(b"\x32", {})
    with pytest.raises(TypeError, match="tag must be bytes"):
        speedups.encode_fields(0x32, {}, frozenset())
    with pytest.raises(TypeError, match="tag must be bytes"):
        speedups.encode_fields(b"", {}, frozenset())
    with pytest.raises(TypeError, match="skip must be a set"):
        speedups.encode_fields(b"\x32", {}, ["a"])
    with pytest.raises(TypeError, match="takes 11 arguments"):
        speedups.encode_span(1, 2)
    with pytest.raises(TypeError, match="takes 7 arguments"):
        speedups.encode_log_event(1, b"", {}, frozenset(), 1, 2)
    with pytest.raises(TypeError, match="skip must be a set"):
        speedups.encode_log_event(1, b"", {}, None, 1, 2, 1)


def _span_args(rng: random.Random) -> dict[str, Any]:
    remote = rng.random() < 0.5
    parent = (
        None
        if rng.random() < 0.3
        else SpanContext(
            rng.randrange(1, 1 << 128),
            rng.randrange(1, 1 << 64),
            is_remote=remote,
            trace_flags=TraceFlags(1),
        )
    )
    code = rng.choice([StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR])
    description = rng.choice([None, "", "boom", "é" * 70]) if code is StatusCode.ERROR else None
    return {
        "context": SpanContext(
            rng.choice([1, rng.randrange(1, 1 << 128), (1 << 128) - 1]),
            rng.choice([1, rng.randrange(1, 1 << 64), (1 << 64) - 1]),
            is_remote=False,
            trace_flags=TraceFlags(1),
        ),
        "parent": parent,
        "name": rng.choice(["GET /items/{id}", "", "é" * 200, "HTTP"]),
        "kind": rng.choice(list(SpanKind)),
        "start_time": rng.choice([None, 0, 1, 1_700_000_000_123_456_789, (1 << 64) - 1]),
        "end_time": rng.choice([None, 0, 1_700_000_000_223_456_789]),
        "attributes": _mapping(rng, False),
        "status": Status(code, description),
    }


def _span_body(args: dict[str, Any]) -> bytes:
    return _otlp_encode._span_body(
        args["context"],
        args["parent"],
        args["name"],
        args["kind"],
        args["start_time"],
        args["end_time"],
        args["attributes"],
        0,
        (),
        0,
        (),
        0,
        args["status"],
    )


@pytest.mark.parametrize("seed", range(10))
def test_span_is_the_python_encoders_bytes(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random ids at their extremes, remote and local parents or none, long names and
    descriptions, every kind and status, with and without times: the same bytes."""
    rng = random.Random(seed)
    calls = []
    native_span = _otlp_encode._native_span
    assert native_span is not None

    def counting(*args: Any) -> bytes | None:
        result = native_span(*args)
        calls.append(result is not None)
        return result

    for _ in range(100):
        args = _span_args(rng)
        monkeypatch.setattr(_otlp_encode, "_native_span", counting)
        got = _span_body(args)
        monkeypatch.setattr(_otlp_encode, "_native_span", None)
        monkeypatch.setattr(_otlp_encode, "_native_fields", None)
        assert got == _span_body(args), args
        monkeypatch.undo()
        # written in C, but for a status too long for a one-byte length (Python frames it)
        long_status = len((args["status"].description or "").encode()) + 4 > 127
        assert calls.pop() is not long_status, args


def test_span_leaves_odd_values_to_python() -> None:
    base = (1, 2, None, False, "n", 2, 1, 2, {}, 0, None)
    assert speedups.encode_span(*base) is not None
    for index, value in (
        (0, -1),  # a negative id
        (0, 1 << 128),  # beyond 16 bytes
        (1, 1 << 64),
        (2, 1 << 64),
        (4, "\ud800"),
        (4, _Key.USER),
        (6, 1 << 64),  # a time beyond 64 bits
        (8, {"v": (1,)}),
        (10, 3),  # a description that is not a str
    ):
        args = list(base)
        args[index] = value
        assert speedups.encode_span(*args) is None, (index, value)
    # a status description too long for a one-byte length: framed by Python
    assert speedups.encode_span(*base[:9], 2, "x" * 200) is None


def test_log_event_is_the_python_encoders_bytes(python_encoder: None) -> None:
    """The record's time, the cached head, the event's fields but the record's own, flags
    and ids: the bytes ``_emitted`` writes, for ids and times at their extremes."""
    from opentelemetry._logs import SeverityNumber

    from kiki_otel._logging import _RECORD_FIELDS

    rng = random.Random(7)
    for _ in range(300):
        event = {"event": "http.request", "level": "info", **_mapping(rng, False)}
        timestamp = rng.choice([0, 1, 1_700_000_000_123_456_789, (1 << 64) - 1])
        trace_id = rng.choice([0, 1, rng.randrange(1 << 128), (1 << 128) - 1])
        span_id = rng.choice([0, rng.randrange(1 << 64), (1 << 64) - 1])
        flags = rng.choice([0, 1])
        head = _otlp_encode._head(SeverityNumber.INFO, "INFO", "http.request")
        got = speedups.encode_log_event(
            timestamp, head, event, _RECORD_FIELDS, trace_id, span_id, flags
        )
        expected = _otlp_encode.encode_log_event(
            timestamp,
            SeverityNumber.INFO,
            "INFO",
            "http.request",
            event,
            _RECORD_FIELDS,
            trace_id,
            span_id,
            flags,
            None,
            None,
        )
        assert expected is not None
        assert got == expected.payload


def test_log_event_leaves_odd_values_to_python() -> None:
    skip = frozenset({"event"})
    assert speedups.encode_log_event(1, b"", {"a": 1}, skip, 1, 2, 1) is not None
    assert speedups.encode_log_event(1, b"", {"a": (1,)}, skip, 1, 2, 1) is None
    assert speedups.encode_log_event(1, b"", {"a": 1}, skip, 1 << 128, 2, 1) is None
    assert speedups.encode_log_event(1, b"", {"a": 1}, skip, 1, 2, 256) is None
    assert speedups.encode_log_event(1 << 64, b"", {"a": 1}, skip, 1, 2, 1) is None
    assert speedups.encode_log_event(1, "head", {"a": 1}, skip, 1, 2, 1) is None


def test_long_output_grows_past_the_inline_buffer() -> None:
    """Fields past the 1 KB stack buffer move to the heap, byte for byte."""
    mapping = {f"k{i}": "v" * (i * 37 % 3000) for i in range(200)}
    got = speedups.encode_fields(b"\x4a", mapping, frozenset())
    assert got == _python_fields(b"\x4a", mapping, frozenset())
    assert len(got) > 200_000


def test_the_switch_turns_the_c_encoder_off() -> None:
    """``KIKI_OTEL_NO_SPEEDUPS=1``: the pure-Python encoder, for a bug report or a benchmark."""
    code = "import kiki_otel._otlp_encode as e; print(e._native is None, e._native_span is None)"
    env = {**os.environ, "KIKI_OTEL_NO_SPEEDUPS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_a_dict_changed_by_another_thread_is_read_whole() -> None:
    """The C encoder keeps the GIL and runs no Python code while it reads a dict, so a
    thread changing the dict meanwhile can only be seen before or after: every output is
    the encoding of one state the dict was in, never a mix (the Python encoder copies the
    dict first for the same guarantee). Encodes until the other thread has changed it a
    thousand times."""
    import threading

    states: list[dict[str, Any]] = [{"a": 1, "b": "bee"}, {"a": 1, "c": 2.5}, {}]
    valid = {speedups.encode_fields(b"\x32", state, frozenset()) for state in states}
    shared: dict[str, Any] = dict(states[0])
    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        while not stop.is_set():
            shared.clear()  # {} until the update: a state of its own
            shared.update(states[flips[0] % 2])
            flips[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as the interpreter can
    thread = threading.Thread(target=flip)
    thread.start()
    seen = set()
    try:
        for _ in range(5_000_000):  # a bound, not a timing: the loop ends on the flips
            seen.add(speedups.encode_fields(b"\x32", shared, frozenset()))
            if flips[0] >= 1000:
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert flips[0] >= 1000  # it was changed meanwhile, over and over
    assert seen <= valid


# ----------------------------------------------------------------------- json_line

_JSON_CHARS = [chr(c) for c in range(0x80)] + ["é", "\u2028", "\u2029", "\ufeff", "✓", "🚀"]


def _json_value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return "".join(rng.choice(_JSON_CHARS) for _ in range(rng.randrange(0, 40)))
    if kind == 1:  # any double, by its bits: every exponent, subnormals, inf and nan
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if kind == 2:  # durations in ms as the access line rounds them, and near the edges
        return round(rng.uniform(0, 10) ** rng.uniform(-6, 17), rng.randrange(0, 7))
    if kind == 3:
        return rng.choice([0, -1, 9, 10, -10, (1 << 63) - 1, -(1 << 63), rng.getrandbits(63)])
    return _plain_value(rng)


@pytest.mark.parametrize("seed", range(20))
def test_json_line_is_orjsons_bytes(seed: int) -> None:
    """Plain dicts render as orjson renders them; the cases orjson writes its own way (an
    exponent, inf, nan) are handed back, and only those."""
    rng = random.Random(seed)
    handed_back = 0
    for _ in range(2_000):
        mapping = {
            rng.choice(_JSON_CHARS) * rng.randrange(1, 4) + str(i): _json_value(rng)
            for i in range(rng.randrange(0, 8))
        }
        line = speedups.json_line(mapping)
        if line is None:
            handed_back += 1
            floats = [v for v in mapping.values() if type(v) is float]
            assert any("e" in repr(v) or not math.isfinite(v) for v in floats), mapping
            continue
        assert line == orjson.dumps(mapping)
    assert handed_back < 2_000 / 2  # most lines are written here


def test_json_line_leaves_what_is_not_plain_to_orjson() -> None:
    """Not a dict, a dict subclass, a key or value that is not exactly a plain type, an int
    beyond 64 bits, a lone surrogate: None, for orjson (or the stdlib) to write."""
    for mapping in [
        [("a", 1)],
        collections.OrderedDict(a=1),
        {1: "a"},
        {_Key.USER: "a"},
        {"a": _Key.USER},
        {"a": [1, 2]},
        {"a": {"b": 1}},
        {"a": 1 << 63},
        {"a": -(1 << 63) - 1},
        {"a": "lone \ud800"},
        {"\ud800": 1},
        {"a": float("nan")},
        {"a": float("-inf")},
        {"a": 1e16},
        {"a": 1e-5},
        {"a": b"raw"},
        {"a": object()},
    ]:
        assert speedups.json_line(mapping) is None, mapping
    assert speedups.json_line({}) == b"{}"


def test_json_line_escapes_a_character_wherever_it_falls_in_a_word() -> None:
    """Strings are scanned eight bytes at a time: each character that needs an escape (and
    neighbours that must not be taken for one: 0x20, '#', '[', ']', 0x7f, UTF-8 bytes) at
    each position of strings of every length around the word size, as key and as value."""
    specials = [chr(c) for c in range(0x20)] + ['"', "\\"]
    neighbours = [" ", "!", "#", "[", "]", "\x7f", "é", "\u2028", "🚀"]
    for size in range(0, 26):
        for special in [*specials, *neighbours]:
            for position in range(size):
                text = "a" * position + special + "b" * (size - position - 1)
                for mapping in ({"k": text}, {text: 1}, {"k": text + "\\", text: text}):
                    assert speedups.json_line(mapping) == orjson.dumps(mapping), mapping
        plain = "x" * size
        assert speedups.json_line({plain: plain}) == orjson.dumps({plain: plain})


def test_json_line_grows_past_the_inline_buffer() -> None:
    mapping = {f"k{i}": '\x01"\\' * (i * 37 % 3000) for i in range(100)}
    assert speedups.json_line(mapping) == orjson.dumps(mapping)


# ----------------------------------------------------------------- histogram_aggregate


def _twin_histograms(bounds: list[float]) -> tuple[Any, Any]:
    """Two SDK explicit-bucket aggregations with aligned reservoirs, as the SDK makes them."""
    from opentelemetry.sdk.metrics._internal.aggregation import (
        AggregationTemporality,
        _ExplicitBucketHistogramAggregation,
    )
    from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
        AlignedHistogramBucketExemplarReservoir,
    )

    def one() -> Any:
        return _ExplicitBucketHistogramAggregation(
            {"route": "/a"},
            AggregationTemporality.CUMULATIVE,
            0,
            AlignedHistogramBucketExemplarReservoir,
            boundaries=bounds,
        )

    return one(), one()


def _state(aggregation: Any) -> tuple[Any, ...]:
    buckets = aggregation._reservoir._reservoir_storage
    return (
        aggregation._value,
        aggregation._sum,
        aggregation._min,
        aggregation._max,
        {index: dict(vars(bucket)) for index, bucket in buckets.items()},
    )


def test_histogram_aggregate_writes_what_the_sdk_writes() -> None:
    """Random durations, every boundary and its neighbours, 0 and beyond the last bound:
    counts, sum, min, max and every exemplar bucket as the SDK's own ``aggregate`` leaves
    them (offering the exemplar to the reservoir for two measurements in three), and the
    same points collected twice in between."""
    from opentelemetry import trace
    from opentelemetry.sdk.metrics._internal.aggregation import AggregationTemporality

    from kiki_otel._fast_histogram import _BUCKET_FIELDS, _Measurement

    assert _BUCKET_FIELDS is not None
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    rng = random.Random(7)
    values = [b + d for b in bounds for d in (-1e-12, 0.0, 1e-12)] + [0.0, 1e9]
    values += [rng.expovariate(20) for _ in range(3000)]
    sdk, ours = _twin_histograms(bounds)
    for step, value in enumerate(values):
        span_id, trace_id = rng.getrandbits(64) or 1, rng.getrandbits(128) or 1
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(context))
        attributes = {"n": step}
        sampled = step % 3 != 0  # the others: counts only, no exemplar offered
        sdk.aggregate(tuple.__new__(_Measurement, (value, step, None, ctx, attributes)), sampled)
        offered = (value, step, attributes, span_id, trace_id, True)
        reservoir = ours._reservoir if sampled else None
        assert speedups.histogram_aggregate(ours, value, reservoir, _BUCKET_FIELDS, offered)
        assert _state(ours) == _state(sdk)
        if step in (1000, 2000):
            cumulative = AggregationTemporality.CUMULATIVE
            assert sdk.collect(cumulative, step) == ours.collect(cumulative, step)
    assert sum(ours._value) == len(values) - 2001  # what came after the last collection


def test_histogram_aggregate_hands_back_without_changing_anything() -> None:
    """Not an exact float, boundaries that are not floats, a field missing, counts of
    another length: False, and every field as it was (the Python path runs instead)."""
    from kiki_otel._fast_histogram import _BUCKET_FIELDS

    offered = (0.5, 1, {}, 2, 3, True)
    cases: list[tuple[Any, Any]] = [(1, None), (True, None)]
    for value, _ in cases:
        _, ours = _twin_histograms([0.1, 1.0])
        before = _state(ours)
        assert speedups.histogram_aggregate(ours, value, None, None, None) is False
        assert _state(ours) == before
    _, ours = _twin_histograms([0.1, 1.0])
    ours._boundaries = (0.1, 1)  # an int bound
    assert speedups.histogram_aggregate(ours, 0.5, None, None, None) is False
    _, ours = _twin_histograms([0.1, 1.0])
    ours._reservoir._boundaries = [0.1, "1.0"]
    before = _state(ours)
    assert not speedups.histogram_aggregate(ours, 0.5, ours._reservoir, _BUCKET_FIELDS, offered)
    assert _state(ours) == before
    for name in ("_sum", "_max", "_lock", "_record_min_max", "_boundaries"):
        _, ours = _twin_histograms([0.1, 1.0])
        delattr(ours, name)  # another SDK's layout
        before = {k: v for k, v in vars(ours).items() if k != "_reservoir"}
        assert speedups.histogram_aggregate(ours, 0.5, None, None, None) is False, name
        assert {k: v for k, v in vars(ours).items() if k != "_reservoir"} == before
    _, ours = _twin_histograms([0.1, 1.0])
    del ours._reservoir._reservoir_storage
    assert not speedups.histogram_aggregate(ours, 0.5, ours._reservoir, _BUCKET_FIELDS, offered)
    assert ours._value is None
    _, ours = _twin_histograms([0.1, 1.0])
    ours._value = [0, 0]  # not len(boundaries) + 1
    assert speedups.histogram_aggregate(ours, 0.5, None, None, None) is False
    assert ours._value == [0, 0] and ours._sum == 0
    with pytest.raises(TypeError, match="names and values"):
        speedups.histogram_aggregate(ours, 0.5, ours._reservoir, ("a",), (1, 2))
    with pytest.raises(TypeError, match="takes 5 arguments"):
        speedups.histogram_aggregate(ours, 0.5)


def test_histogram_aggregate_releases_its_locks_on_an_error() -> None:
    """An error inside (a sum that cannot add, a storage that cannot be indexed) propagates
    with both locks released, as the SDK's ``with`` blocks leave them."""
    from kiki_otel._fast_histogram import _BUCKET_FIELDS

    class NoAdd:
        def __add__(self, other: object) -> Any:
            raise ArithmeticError("no")

    _, ours = _twin_histograms([0.1, 1.0])
    ours._sum = NoAdd()
    with pytest.raises(ArithmeticError):
        speedups.histogram_aggregate(ours, 0.5, None, None, None)
    assert ours._lock.acquire(blocking=False)
    ours._lock.release()
    _, ours = _twin_histograms([0.1, 1.0])
    ours._reservoir._reservoir_storage = {}  # not a defaultdict: KeyError
    offered = (0.5, 1, {}, 2, 3, True)
    with pytest.raises(KeyError):
        speedups.histogram_aggregate(ours, 0.5, ours._reservoir, _BUCKET_FIELDS, offered)
    assert ours._value == [0, 1, 0]  # the counts went in before the exemplar failed
    for lock in (ours._lock, ours._reservoir._lock):
        assert lock.acquire(blocking=False)
        lock.release()


def test_histogram_aggregate_from_threads_loses_no_count() -> None:
    """Four threads aggregating at once, with a collector thread collecting: every
    measurement is in exactly one collection (the aggregation's lock, taken in C)."""
    import threading

    from opentelemetry.sdk.metrics._internal.aggregation import AggregationTemporality

    _, ours = _twin_histograms([0.1, 1.0])
    ours._instrument_aggregation_temporality = AggregationTemporality.DELTA
    collected: list[int] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            point = ours.collect(AggregationTemporality.DELTA, 1)
            if point is not None:
                collected.append(point.count)

    def record() -> None:
        for i in range(5000):
            assert speedups.histogram_aggregate(ours, (i % 7) / 3, None, None, None)

    collector = threading.Thread(target=collect)
    collector.start()
    workers = [threading.Thread(target=record) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    collector.join()
    last = ours.collect(AggregationTemporality.DELTA, 2)
    assert sum(collected) + (last.count if last is not None else 0) == 20000


def test_json_line_writes_thousandths_as_orjson_does() -> None:
    """The access line's duration (ms to the us) is written without dtoa: every whole
    number of thousandths, of either sign, at the edges of that path (1e-3, 1e11) and
    beyond them, rounded as the server rounds it, exactly as orjson writes it."""
    rng = random.Random(11)
    counts = [1, 2, 5, 9, 10, 999, 1000, 1001, 1010, 1500, 99_999_999_999_999]
    counts += [10**k + d for k in range(15) for d in (-1, 0, 1)]
    counts += [rng.randrange(1, 10**14) for _ in range(20_000)]
    counts += [rng.randrange(1, 10**7) for _ in range(20_000)]
    values = [sign * n / 1000 for n in counts for sign in (1, -1)]
    values += [round(rng.expovariate(1 / 50) * 1e6) / 1e3 for _ in range(20_000)]
    values += [math.nextafter(v, math.inf) for v in values[:2000]]  # near, not on, one
    for value in values:
        mapping = {"duration_ms": value}
        got = speedups.json_line(mapping)
        assert got is None or got == orjson.dumps(mapping), value
        if 1e-3 <= abs(value) < 1e11 and value == round(value * 1000) / 1000:
            assert got is not None, value  # taken, never handed to orjson


class _Plain:
    """Fields set by its constructor, as the SDK's span sets its own."""

    def __init__(self) -> None:
        self.a = 1
        self.b = "two"
        self.c: Any = None


class _Guarded(_Plain):
    """A property that refuses one value: ``new_instance`` sets through ``setattr``."""

    @property
    def c(self) -> Any:
        return self.__dict__.get("_c")

    @c.setter
    def c(self, value: Any) -> None:
        if value == "refused":
            raise ValueError("refused")
        self.__dict__["_c"] = value


class _Made(Exception):
    pass


class _OwnNew(_Plain):
    """A class whose ``__new__`` runs code: ``new_instance`` does not call it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _Made


def test_new_instance_is_the_python_twins_object() -> None:
    """Same class, same fields in the same order as its Python twin, and
    attributes that read back as any instance's (no dict of its own needed)."""
    from kiki_otel._native import new_instance_py

    _Plain()  # the class's shared keys hold a, b, c
    template = {"a": 10, "b": "t"}
    for cls in (_Plain, _Guarded, _OwnNew):
        made = speedups.new_instance(cls, template, c=[1], d=2.5)
        twin = new_instance_py(cls, template, c=[1], d=2.5)
        assert type(made) is cls and type(twin) is cls
        assert (made.a, made.b, made.c, made.d) == (10, "t", [1], 2.5)
        if cls is not _Guarded:  # the twin writes __dict__ past the property
            assert list(vars(made).items()) == list(vars(twin).items())
    assert vars(speedups.new_instance(_Plain, {})) == {}
    with pytest.raises(_Made):
        _OwnNew()  # its own __new__, skipped above


def test_new_instance_refuses_bad_arguments_and_drops_a_half_made_object() -> None:
    import gc
    import weakref

    class Slotted:
        __slots__ = ("__weakref__", "a")

    with pytest.raises(TypeError, match="must be a class"):
        speedups.new_instance("not a class", {})
    with pytest.raises(TypeError, match="must be a dict"):
        speedups.new_instance(_Plain, [("a", 1)])
    with pytest.raises(TypeError):
        speedups.new_instance(_Plain)
    with pytest.raises(ValueError, match="refused"):
        speedups.new_instance(_Guarded, {}, c="refused")
    with pytest.raises(AttributeError):
        speedups.new_instance(Slotted, {"b": 1})
    made = speedups.new_instance(Slotted, {"a": 1})
    assert made.a == 1
    gone = weakref.ref(made)
    del made
    gc.collect()
    assert gone() is None


def test_new_instance_survives_a_setter_that_empties_its_template() -> None:
    """A property's setter is Python code: one that clears the template while it is read
    ends the template's items there, without a crash; the fields still go in."""
    template: dict[str, Any] = {}

    class Clearing:
        @property
        def first(self) -> Any:
            return self.__dict__["_first"]

        @first.setter
        def first(self, value: Any) -> None:
            template.clear()  # frees the template's other items
            self.__dict__["_first"] = value

    template.update(first=object(), second=[object()])
    made = speedups.new_instance(Clearing, template, third=3)
    assert type(made.first) is object and made.third == 3
    assert not hasattr(made, "second")


def test_new_tuple_is_tuple_new() -> None:
    """A tuple subclass made from the items, as ``tuple.__new__(cls, items)`` makes it,
    tracked by the garbage collector (it may hold a cycle)."""
    import gc

    from kiki_otel._native import new_tuple_py

    items = (0xABC, 0xDEF, False, TraceFlags(1), None, True)
    made = speedups.new_tuple(SpanContext, *items)
    assert type(made) is SpanContext and made == items == new_tuple_py(SpanContext, *items)
    assert made.trace_id == 0xABC and made.is_valid is True
    assert gc.is_tracked(made)
    assert speedups.new_tuple(SpanContext) == ()
    cycle: list[Any] = []
    held = speedups.new_tuple(SpanContext, cycle)
    cycle.append(held)
    for bad in ((), (tuple, 1), (list, 1), ("SpanContext", 1)):
        with pytest.raises(TypeError, match="tuple subclass"):
            speedups.new_tuple(*bad)


def _random_headers(rng: random.Random) -> list[Any]:
    names = [b"host", b"user-agent", b"traceparent", b"tracestate", b"baggage", b"x-request-id"]
    names += [b"accept", b"cookie", b"x-\xe9t\xe9", b""]
    headers: list[Any] = []
    for _ in range(rng.randrange(12)):
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        pair = (rng.choice(names), value)
        headers.append(list(pair) if rng.random() < 0.2 else pair)
    return headers


@pytest.mark.parametrize("seed", range(4))
def test_scan_headers_is_the_python_loops(seed: int) -> None:
    """Carrier (repeated headers joined, latin-1 decoded), traceparent count and client ids
    equal the Python loop's, for every header set, W3C-only or not; the names of the W3C
    headers are the very strings made once."""
    from kiki_otel._http_server import _W3C_HEADERS, _scan_headers_py

    rng = random.Random(seed)
    for _ in range(2_000):
        headers = _random_headers(rng)
        if rng.random() < 0.1:
            headers = tuple(headers)  # type: ignore[assignment]
        for wanted in (None, _W3C_HEADERS):
            got = speedups.scan_headers(headers, b"x-request-id", wanted)
            assert got == _scan_headers_py(headers, b"x-request-id", wanted)
            if wanted is not None:
                assert all(name is _W3C_HEADERS[name.encode("latin-1")] for name in got[0])


def test_scan_headers_leaves_other_header_shapes_to_python() -> None:
    from kiki_otel._http_server import _W3C_HEADERS

    odd: list[Any] = [
        iter([(b"host", b"h")]),  # any iterable is valid ASGI: the Python loop reads it
        [(b"host", b"h", b"extra")],
        [(b"host",)],
        [(bytearray(b"host"), b"h")],
        [(b"host", "h")],
        [("host", b"h")],
        [b"host"],
        [(b"host", b"h"), None],
    ]
    for headers in odd:
        assert speedups.scan_headers(headers, b"x-request-id", _W3C_HEADERS) is None
    assert speedups.scan_headers([], b"x-request-id", None) == ({}, 0, None)
    with pytest.raises(TypeError, match="id_header must be bytes"):
        speedups.scan_headers([], "x-request-id", None)
    with pytest.raises(TypeError, match="wanted a dict"):
        speedups.scan_headers([], b"x-request-id", frozenset())
    with pytest.raises(TypeError):
        speedups.scan_headers([], b"x-request-id")


def _sdk_spans(rng: random.Random) -> Iterator[tuple[Any, bool]]:
    """Ended SDK spans, and whether each is ``sdk_span``'s plain case."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.trace import Link, NonRecordingSpan, TraceState

    tracer = TracerProvider(span_limits=SpanLimits(max_attributes=8)).get_tracer("t")
    for _ in range(60):
        args = _span_args(rng)
        shape = rng.randrange(8)
        parent_context = args["parent"]
        if shape == 1 and parent_context is not None:  # a parent with a trace state
            parent_context = SpanContext(
                parent_context.trace_id,
                parent_context.span_id,
                is_remote=parent_context.is_remote,
                trace_flags=TraceFlags(1),
                trace_state=TraceState([("k", "v")]),
            )
        context = (
            trace.set_span_in_context(NonRecordingSpan(parent_context))
            if parent_context is not None
            else None
        )
        attributes = dict(list(args["attributes"].items())[:8])
        if shape == 2:  # past the limit: a dropped count
            attributes = {f"a{i}": i for i in range(9)}
        if shape == 3:
            attributes["odd"] = 1 << 70  # not plain: a value beyond 64 bits
        links = [Link(args["context"])] if shape == 4 else None
        span = tracer.start_span(
            args["name"],
            context=context,
            kind=args["kind"],
            attributes=attributes,
            links=links,
            start_time=args["start_time"] or None,
        )
        if shape == 5:
            span.add_event("e", {"x": 1})
        status = args["status"]
        if status.status_code is not trace.StatusCode.UNSET:
            span.set_status(status)
        long_status = len((status.description or "").encode()) + 4 > 127
        span.end(end_time=args["end_time"] or None)
        plain = shape not in (2, 3, 4, 5) and not (shape == 1 and parent_context is not None)
        yield span, plain and not long_status


@pytest.mark.parametrize("seed", range(6))
def test_sdk_span_is_the_python_encoders_item(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """SDK spans of every shape: the plain ones in C, the same ``Encoded`` item either way."""
    assert _otlp_encode._native_sdk_span is not None
    native = _otlp_encode._native_sdk_span
    calls: list[bool] = []

    def counting(*args: Any) -> Any:
        result = native(*args)
        calls.append(result is not None)
        return result

    for span, plain in _sdk_spans(random.Random(seed)):
        monkeypatch.setattr(_otlp_encode, "_native_sdk_span", counting)
        got = _otlp_encode.encode_span(span)
        monkeypatch.setattr(_otlp_encode, "NATIVE_SDK_SPAN", None)
        monkeypatch.setattr(_otlp_encode, "_native_span", None)
        monkeypatch.setattr(_otlp_encode, "_native_fields", None)
        expected = _otlp_encode.encode_span(span)
        monkeypatch.undo()
        assert type(got) is _otlp_encode.Encoded
        assert tuple(got) == tuple(expected), span.name
        assert got[1] is span.resource and got[2] is span.instrumentation_scope
        assert calls.pop() is plain, (span.name, span.attributes, span.events, span.links)


def test_sdk_span_leaves_other_objects_to_python() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    types = _otlp_encode.NATIVE_SDK_SPAN
    assert types is not None
    span = TracerProvider().get_tracer("t").start_span("n", attributes={"k": 1})
    span.end()
    fields = [
        span._context,
        span._parent,
        span._name,
        span._kind,
        1,
        2,
        span._attributes,
        span._events,
        span._links,
        span._status,
        span._resource,
        span._instrumentation_scope,
    ]
    assert speedups.sdk_span(*fields, types) is not None
    for index, value in (
        (0, (1, 2, False, 1, None, True)),  # a plain tuple, not a SpanContext
        (1, (1, 2, False)),
        (2, _Key.USER),  # a str subclass as the name
        (3, 1),  # not a SpanKind member
        (6, {"k": 1}),  # a dict, not BoundedAttributes
        (7, [1]),  # a list, not BoundedList
        (9, None),  # no Status
    ):
        changed = list(fields)
        changed[index] = value
        assert speedups.sdk_span(*changed, types) is None, (index, value)


def test_sdk_span_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="takes 13 arguments"):
        speedups.sdk_span(1, 2)
    with pytest.raises(TypeError, match="types is not what"):
        speedups.sdk_span(*range(12), ())
    types = list(_otlp_encode.NATIVE_SDK_SPAN or ())
    types[5] = dict  # Encoded must be a tuple subclass
    with pytest.raises(TypeError, match="types is not what"):
        speedups.sdk_span(*range(12), tuple(types))


def _python_each(items: Any, tag: bytes) -> bytes:
    native = _otlp_encode._native_frame
    _otlp_encode._native_frame = None
    try:
        return _otlp_encode._encode_each(items, None, tag)
    finally:
        _otlp_encode._native_frame = native


@pytest.mark.parametrize("seed", range(3))
def test_frame_items_is_the_python_loops_bytes(seed: int) -> None:
    """Payloads of every length class of their varint (1, 2 and 3 bytes), any tag, lists
    and tuples: the Python loop's bytes."""
    rng = random.Random(seed)
    encoded = _otlp_encode.Encoded
    for _ in range(300):
        sizes = [rng.choice([0, 1, 127, 128, 300, 16383, 16384, 70000]) for _ in range(8)]
        items: Any = [encoded(bytes([i % 256]) * size, None, None) for i, size in enumerate(sizes)]
        items = items[: rng.randrange(0, 9)]
        if rng.random() < 0.3:
            items = tuple(items)
        tag = rng.choice(_TAGS)
        assert speedups.frame_items(items, tag, encoded) == _python_each(items, tag)
        assert _otlp_encode._encode_each(items, None, tag) == _python_each(items, tag)


def test_frame_items_leaves_other_items_to_python() -> None:
    encoded = _otlp_encode.Encoded
    good = encoded(b"x", None, None)
    for items in (
        [good, (b"x", None, None)],  # a plain tuple, not an Encoded
        [good, encoded(bytearray(b"x"), None, None)],  # a payload that is not bytes
        [good, object()],
        iter([good]),  # not a list or tuple
    ):
        assert speedups.frame_items(items, b"\x12", encoded) is None
    assert speedups.frame_items([], b"\x12", encoded) == b""
    with pytest.raises(TypeError, match="tag must be bytes"):
        speedups.frame_items([good], "x", encoded)
    with pytest.raises(TypeError, match="tuple subclass"):
        speedups.frame_items([good], b"\x12", dict)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        speedups.frame_items([good], b"\x12")


# ------------------------------------------------------------------------ request_ids


@pytest.mark.parametrize("seed", range(3))
def test_request_ids_are_the_python_twins(seed: int) -> None:
    """The hex ids and the response headers equal ``_request_ids_py``'s, for ids of every
    size (the range's ends too), every flags byte (sampled, Level 2's random bit; a bool),
    each header switched on or off."""
    from kiki_otel._http_server import _request_ids_py

    rng = random.Random(seed)
    edges = [(1, 1), ((1 << 128) - 1, (1 << 64) - 1), (1 << 64, 1 << 32), (0xFF, 0x100)]
    for i in range(2_000):
        trace_id, span_id = (
            edges[i]
            if i < len(edges)
            else (
                rng.getrandbits(rng.randrange(1, 129)),
                rng.getrandbits(rng.randrange(1, 65)),
            )
        )
        sampled = rng.choice([0, 1, 2, 3, 0xFF, True, False, TraceFlags(3)])
        which = (
            rng.choice([b"x-request-id", b"x-correlation-id"]),
            *rng.choices([True, False], k=2),
        )
        got = speedups.request_ids(trace_id, span_id, sampled, which)
        assert got == _request_ids_py(trace_id, span_id, sampled, which)
        (trace_hex, span_hex), headers = got
        assert int(trace_hex, 16) == trace_id and len(trace_hex) == 32
        assert int(span_hex, 16) == span_id and len(span_hex) == 16
        assert headers[0] == (which[0], trace_hex.encode())


def test_request_ids_leave_ids_out_of_range_to_python() -> None:
    """An id too large, negative or not an int: None (the Python twin raises for it); a
    ``which`` of another shape: a clear TypeError."""
    which = (b"x-request-id", True, True)
    for trace_id, span_id in [(1 << 128, 1), (1, 1 << 64), (-1, 1), (1, -1), (1.0, 1), (1, "1")]:
        assert speedups.request_ids(trace_id, span_id, 1, which) is None
    for odd in [("x-request-id", True, True), (b"x-request-id", True), [b"x-request-id", 1, 1]]:
        with pytest.raises(TypeError, match="which must be a tuple"):
            speedups.request_ids(1, 1, 1, odd)
    with pytest.raises(TypeError):
        speedups.request_ids(1, 1, 1)


def test_an_id_read_again_is_the_same_bytes_and_another_is_its_own() -> None:
    """The last trace and span id read are kept by identity: the same int objects read
    again, interleaved with others (equal values in other objects, other values, ids of
    the other size), give each its own bytes, in the headers and in an encoded span."""
    from kiki_otel._http_server import _request_ids_py

    which = (b"x-request-id", True, False)
    trace_ids = [(1 << 127) + 5, int("7" * 32, 16), (1 << 64) + 1, 3]
    span_ids = [(1 << 63) + 9, int("1" * 16, 16), 2]
    for trace_id in [*trace_ids, *trace_ids[::-1]]:
        for span_id in [*span_ids, span_ids[0], int(str(span_ids[0]))]:
            for _ in range(2):
                got = speedups.request_ids(trace_id, span_id, 1, which)
                assert got == _request_ids_py(trace_id, span_id, 1, which)
            as_span = speedups.request_ids(span_id, trace_id & ((1 << 64) - 1), 0, which)
            assert as_span == _request_ids_py(span_id, trace_id & ((1 << 64) - 1), 0, which)


class _Server:
    """An ASGI server's ``send``: records each message and the OTel context it ran in."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.got: list[tuple[Any, Any]] = []
        self.fail_on = fail_on

    async def __call__(self, message: Any) -> None:
        from opentelemetry import context as otel_context

        await asyncio.sleep(0)  # a server's send may wait (flow control)
        self.got.append(
            (dict(message) if isinstance(message, dict) else message, otel_context.get_value("who"))
        )
        if self.fail_on is not None and message.get("type") == self.fail_on:
            raise ConnectionResetError("client went away")


_OURS = [(b"x-request-id", b"0af7651916cd43dd8448eb211c80319c"), (b"traceresponse", b"00-...")]

_CONVERSATIONS: list[list[Any]] = [
    [  # the usual: the app's own id header (any case) gives way to ours, the rest stays
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"X-Request-ID", b"app"),
                (b"x-b", b"1"),
            ],
        },
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b"},
    ],
    [  # headers as a tuple, no headers at all; the last message with more_body False
        {"type": "http.response.start", "status": 404, "headers": ((b"x-a", b"1"),)},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ],
    [
        {"type": "http.response.start", "status": 204},
        {"type": "http.response.pathsend", "path": "/f"},
    ],
    [  # other shapes, the Python path's: list pairs, a str name, a non-list
        {"type": "http.response.start", "status": 200, "headers": [[b"x-request-id", b"app"]]},
        {"type": "http.response.trailers", "headers": [], "more_trailers": False},
        {"type": "http.response.body", "body": b"x", "more_body": 0},
    ],
    [
        {"type": "http.response.start", "status": 200, "headers": [("X-Request-Id", "a")]},
        {"type": "http.response.body", "more_body": None},
    ],
    [{"type": "http.response.start", "status": 500, "headers": iter([(b"a", b"b")])}],
    [{"type": "http.response.start", "status": 200, "headers": [(b"x-request-id",)]}],
    [collections.OrderedDict(type="http.response.start", status=201), {"type": "websocket.send"}],
]


async def _converse(make: Any, messages: list[Any], server: _Server) -> tuple[Any, ...]:
    from opentelemetry import context as otel_context

    from kiki_otel._context import CURRENT
    from kiki_otel._http_server import _send

    outer = otel_context.set_value("who", "outer", otel_context.Context())
    token = otel_context.attach(otel_context.set_value("who", "request"))
    try:
        wrapper = make(server, list(_OURS), b"x-request-id", outer, _send, CURRENT)
        outcome: list[Any] = []
        for message in messages:
            try:
                await wrapper(message)
                outcome.append("ok")
            except Exception as exc:
                outcome.append(type(exc).__name__)
            assert otel_context.get_value("who") == "request"  # the request's context after
        sent = wrapper.sent
        return (
            outcome,
            server.got,
            wrapper.status,
            wrapper.started,
            sent > 0,
            wrapper.sent_ns > 0,
            [dict(m) if isinstance(m, dict) else m for m in messages],
        )
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize("messages", _CONVERSATIONS)
async def test_send_wrapper_is_the_python_twins(messages: list[Any]) -> None:
    """The same messages through the C send and the Python one reach the server the same,
    in the same contexts (the last one in the outer context), leave the same state (status,
    started, sent at the last message only) and the same messages; errors are the same."""
    import copy

    from kiki_otel._http_server import _SendWrapper

    results = []
    for make in (speedups.send_wrapper, _SendWrapper):
        results.append(await _converse(make, copy.deepcopy(messages), _Server()))
    assert results[0] == results[1]


async def test_send_wrapper_sends_the_start_in_the_requests_context_and_times_the_last() -> None:
    from kiki_otel._http_server import _SendWrapper

    for make in (speedups.send_wrapper, _SendWrapper):
        server = _Server()
        outcome, got, status, started, sent, sent_ns, _ = await _converse(
            make, copy_of(_CONVERSATIONS[0]), server
        )
        assert outcome == ["ok"] * 3 and (status, started, sent, sent_ns) == (200, True, True, True)
        assert [who for _, who in got] == ["request", "request", "outer"]
        assert got[0][0]["headers"] == [(b"content-type", b"text/plain"), (b"x-b", b"1"), *_OURS]


def copy_of(messages: list[Any]) -> list[Any]:
    import copy

    return copy.deepcopy(messages)


async def test_send_wrapper_errors_are_the_python_twins() -> None:
    """A message without a type or status, a server that fails the last message (not
    timed, the request's context back), a call with other arguments."""
    from kiki_otel._http_server import _SendWrapper

    cases = [
        [{"status": 200}],
        [{"type": "http.response.start"}],
        [{"type": 5}],
        [{"type": "http.response.start", "status": 200}, {"type": "http.response.body"}],
    ]
    for messages in cases:
        results = [
            await _converse(make, copy_of(messages), _Server(fail_on="http.response.body"))
            for make in (speedups.send_wrapper, _SendWrapper)
        ]
        assert results[0] == results[1]
    outcome = results[0]
    assert outcome[0] == ["ok", "ConnectionResetError"] and not outcome[4]  # not sent
    wrapper = speedups.send_wrapper(_Server(), [], b"x-request-id", None, None, None)
    with pytest.raises(TypeError, match="one argument"):
        wrapper({}, {})
    with pytest.raises(TypeError, match="one argument"):
        wrapper(message={})
    with pytest.raises(TypeError, match="headers must be a list"):
        speedups.send_wrapper(_Server(), (), b"x-request-id", None, None, None)
    with pytest.raises(TypeError):
        speedups.send_wrapper(_Server(), [])


class _Gate:
    """Awaited, yields to the loop until released (no loop needed to step it by hand)."""

    def __init__(self) -> None:
        self.released = False

    def set(self) -> None:
        self.released = True

    def __await__(self) -> Any:
        while not self.released:
            yield
        return True


class _Waiting:
    """A server whose send of the last message waits until released, and notes how it ends
    and in which context each step of it ran."""

    def __init__(self, swallow: bool = False) -> None:
        self.release = _Gate()
        self.steps: list[Any] = []
        self.ended: str | None = None
        self.swallow = swallow

    async def __call__(self, message: Any) -> str:
        from opentelemetry import context as otel_context

        self.steps.append(otel_context.get_value("who"))
        try:
            await self.release
            self.steps.append(otel_context.get_value("who"))
            self.ended = "sent"
        except asyncio.CancelledError:
            self.steps.append(otel_context.get_value("who"))
            self.ended = "cancelled"
            if not self.swallow:
                raise
        except GeneratorExit:
            self.ended = "closed"
            raise
        return "result"


def _wrappers() -> list[Any]:
    from kiki_otel._http_server import _SendWrapper

    return [speedups.send_wrapper, _SendWrapper]


async def _last_in_task(make: Any, server: Any, cancel: bool) -> tuple[Any, ...]:
    from opentelemetry import context as otel_context

    from kiki_otel._context import CURRENT
    from kiki_otel._http_server import _send

    outer = otel_context.set_value("who", "outer", otel_context.Context())

    async def app() -> Any:
        otel_context.attach(otel_context.set_value("who", "request"))
        wrapper = make(server, [], b"x-request-id", outer, _send, CURRENT)
        try:
            result = await wrapper({"type": "http.response.body", "body": b"x"})
        except asyncio.CancelledError:
            result = "CancelledError"
        return result, otel_context.get_value("who"), wrapper.sent > 0, wrapper.sent_ns > 0

    task = asyncio.ensure_future(app())
    for _ in range(3):
        await asyncio.sleep(0)
    if cancel:
        task.cancel()
    else:
        server.release.set()
    return (await task, server.steps, server.ended)


async def test_the_last_send_steps_in_the_outer_context_and_is_timed_when_it_returns() -> None:
    """Suspended and resumed, cancelled (the server sees it and raises, or swallows it and
    returns): each step in the outer context, the request's context back after, timed only
    when the server's send returned, as the Python twin does."""
    for cancel, swallow in ((False, False), (True, False), (True, True)):
        results = [
            await _last_in_task(make, _Waiting(swallow=swallow), cancel) for make in _wrappers()
        ]
        assert results[0] == results[1], (cancel, swallow)
    assert results[0] == (("result", "request", True, True), ["outer", "outer"], "cancelled")
    sent = [await _last_in_task(make, _Waiting(), False) for make in _wrappers()]
    assert sent[0] == sent[1] == (("result", "request", True, True), ["outer", "outer"], "sent")


async def test_the_last_send_takes_any_awaitable_and_refuses_what_is_not_one() -> None:
    from opentelemetry import context as otel_context

    from kiki_otel._context import CURRENT
    from kiki_otel._http_server import _send

    class Awaitable:
        def __await__(self) -> Any:
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    def future(message: Any) -> Any:
        done = asyncio.get_running_loop().create_future()
        done.set_result("future")
        return done

    outcomes = []
    for make in _wrappers():
        got = []
        for send in (lambda message: Awaitable(), future, lambda message: None):
            wrapper = make(send, [], b"x", otel_context.Context(), _send, CURRENT)
            try:
                got.append((await wrapper({"type": "http.response.body"}), wrapper.sent > 0))
            except TypeError as exc:
                got.append((str(exc), wrapper.sent > 0))
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == [("awaited", True), ("future", True)]
    assert "can't be used in 'await' expression" in outcomes[0][2][0]


def test_the_last_send_takes_throws_as_a_coroutine_does() -> None:
    """throw() into the last send, C's against the twin's coroutine: before it started,
    the error is raised and nothing sent (the (type, value) form too); into a server's
    awaitable whose iterator has no throw() of its own, the error is raised where it
    waits. Arguments that are no exception are a TypeError (C's)."""
    from opentelemetry import context as otel_context

    from kiki_otel._context import CURRENT
    from kiki_otel._http_server import _send

    class Plain:  # an awaitable whose iterator is a list's (no throw, no close)
        def __await__(self) -> Any:
            return iter([None])

    outcomes = []
    for make in _wrappers():
        called: list[Any] = []

        def server(message: Any, called: list[Any] = called) -> Any:
            called.append(message["type"])
            return Plain()

        got = []
        for thrown in ((KeyError("k"),), (KeyError, "k")):
            wrapper = make(server, [], b"x", otel_context.Context(), _send, CURRENT)
            awaitable = wrapper({"type": "http.response.body"})
            # (the twin, a coroutine, warns of the (type, value) form on 3.12+; C does not)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                with pytest.raises(KeyError) as raised:
                    awaitable.throw(*thrown)
            got.append((repr(raised.value), called[:], wrapper.sent))
        wrapper = make(server, [], b"x", otel_context.Context(), _send, CURRENT)
        awaitable = wrapper({"type": "http.response.body"})
        awaitable.send(None)  # (the list iterator's None)
        with pytest.raises(ValueError, match="while waiting"):
            awaitable.throw(ValueError("while waiting"))
        got.append((called[:], wrapper.sent))
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == [("KeyError('k')", [], 0.0)] * 2
    wrapper = speedups.send_wrapper(server, [], b"x", otel_context.Context(), _send, CURRENT)
    awaitable = wrapper({"type": "http.response.body"})
    with pytest.raises(TypeError, match="deriving from BaseException"):
        awaitable.throw("nope")
    with pytest.raises(TypeError, match="traceback"):
        awaitable.throw(KeyError, None, "not a traceback")


def test_the_last_send_closed_while_waiting_closes_the_servers_and_is_not_reused() -> None:
    """A coroutine closed while it waits in the last send (GeneratorExit): the server's send
    is closed too; the awaitable, once done, refuses another round (as a coroutine does)."""
    from opentelemetry import context as otel_context

    from kiki_otel._context import CURRENT
    from kiki_otel._http_server import _send

    for make in _wrappers():
        server = _Waiting()
        wrapper = make(server, [], b"x", otel_context.Context(), _send, CURRENT)
        awaitable = wrapper({"type": "http.response.body"})

        async def app(awaitable: Any) -> None:
            await awaitable

        coroutine = app(awaitable)
        coroutine.send(None)  # suspended in the server's wait
        coroutine.close()
        assert server.ended == "closed" and wrapper.sent == 0.0
        with pytest.raises(RuntimeError, match="cannot reuse already awaited"):
            awaitable.send(None)
