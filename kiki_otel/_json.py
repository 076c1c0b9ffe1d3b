"""JSON bytes of whatever a log call was given: the JSON line's serializer never raises.

A log call that raises fails the request that logged; so every value renders, as well as
it can: orjson first (fast), then orjson with non-str keys as strs, then the stdlib with
keys as strs, non-finite floats as null, cycles and unprintable objects shown as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["json_dumps", "safe_repr"]


def json_dumps(value: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> bytes:
    """JSON bytes of ``value``, whatever a log call was given (the JSON line's serializer).

    orjson; on what it refuses, orjson with non-str dict keys turned into strs (an option
    that makes every line ~40% slower, so only then); on what it still refuses (an int
    beyond 64 bits, a key it cannot turn into a str), the stdlib, keys as strs and
    non-finite floats as null (as orjson writes them): a log call must never raise.
    """
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        pass
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        pass
    try:  # ASCII-escaped: a lone surrogate (from a JSON body, say) becomes \udXXX, valid
        safe = _json_safe(value, ())
        return json.dumps(safe, default=_safe(default), separators=(",", ":")).encode()
    except Exception:  # a log call must not raise: keep what can be shown
        return json.dumps({str(k): safe_repr(v) for k, v in _items(value)}).encode()


_JSON_DEPTH = 64
"""Nesting shown in a log line; deeper (or self-referential) values are elided."""


def _json_safe(value: Any, path: tuple[int, ...]) -> Any:
    """``value`` with str keys, finite floats, and no cycles (``path``: ids of the parents)."""
    if isinstance(value, dict | list | tuple):
        if id(value) in path or len(path) > _JSON_DEPTH:
            return "<recursion>" if id(value) in path else "..."
        inner = (*path, id(value))
        if isinstance(value, dict):
            return {
                str(k) if type(k) is not str else k: _json_safe(v, inner) for k, v in value.items()
            }
        return [_json_safe(v, inner) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _safe(default: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """The stdlib fallback's ``default``: a value as orjson writes it, else ``default``.

    ``default`` (repr, mostly) cannot raise here (an ORM object whose repr fails, say).
    orjson first, so that one value only the stdlib takes (an int beyond 64 bits) does not
    change how the rest of the line renders: a UUID or a datetime stays its plain text.
    """

    def call(value: Any) -> Any:
        try:
            return orjson.loads(orjson.dumps(value, default=default))
        except Exception:  # noqa: S110 - not orjson's either: the default below
            pass
        try:
            return default(value) if default is not None else safe_repr(value)
        except Exception:  # the repr of last resort below cannot raise
            return safe_repr(value)

    return call


def safe_repr(value: Any) -> str:
    """``repr(value)``, or ``<unprintable T>`` when that raises."""
    try:
        return repr(value)
    except Exception:  # an ORM object whose repr needs a session, say
        return f"<unprintable {type(value).__name__}>"


def _items(value: Any) -> list[tuple[Any, Any]]:
    return list(value.items()) if isinstance(value, dict) else [("value", value)]
