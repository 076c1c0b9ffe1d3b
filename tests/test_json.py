"""The JSON line's serializer: orjson's speed for what it takes, and never an exception."""

from __future__ import annotations

import json
from typing import Any

import orjson

from kiki_otel._json import json_dumps


def test_plain_values_are_orjsons_bytes() -> None:
    """The common case is orjson itself: same bytes, no option that slows every line."""
    value = {"event": "e", "n": 1, "f": 0.5, "ok": True, "none": None, "tags": ["a"]}
    assert json_dumps(value, default=repr) == orjson.dumps(value, default=repr)


def test_what_orjson_refuses_still_renders() -> None:
    """Non-str keys as strs, ints beyond 64 bits, lone surrogates (escaped), NaN as null
    (as orjson writes it), cycles and objects whose repr raises: valid JSON every time."""

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("detached")

    loop: dict[str, Any] = {}
    loop["self"] = loop
    cases = [
        ({1: "a", (1, 2): "b"}, {"1": "a", "(1, 2)": "b"}),
        ({"n": 1 << 70}, {"n": 1 << 70}),
        ({"s": "\ud800", "nan": float("nan")}, {"s": "\ud800", "nan": None}),
        ({"v": loop}, {"v": {"self": "<recursion>"}}),
        ({"o": Unprintable()}, {"o": "<unprintable Unprintable>"}),
    ]
    for value, expected in cases:
        assert json.loads(json_dumps(value, default=repr)) == expected


def test_one_value_only_the_stdlib_takes_does_not_change_the_rest() -> None:
    """An int beyond 64 bits sends the line to the stdlib: a UUID, a datetime or a
    dataclass beside it still renders as orjson writes it, not as its repr."""
    import dataclasses
    import datetime
    import uuid

    @dataclasses.dataclass
    class Item:
        sku: str

    fields = {
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "item": Item("a-1"),
    }
    plain = json.loads(json_dumps(fields, default=repr))
    with_big_int = json.loads(json_dumps({**fields, "n": 1 << 70}, default=repr))
    assert with_big_int == {**plain, "n": 1 << 70}
    assert plain["id"] == "12345678-1234-5678-1234-567812345678"
