"""The C module (``_speedups.c``) when it was built and is not switched off, else None.

One place decides, so every module that uses a C path (the encoder, the access line, the
histogram) uses it or not together: it is optional (a wheel built without a C compiler has
none) and ``KIKI_OTEL_NO_SPEEDUPS=1`` turns it off, for a bug report or the benchmark's
pure-Python scenario.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "new_instance",
    "new_instance_py",
    "new_tuple",
    "new_tuple_py",
    "plain_fields",
    "speedups",
]

speedups: Any
try:
    from . import _speedups as speedups
except ImportError:  # built without a C compiler: the Python paths do it all
    speedups = None
if os.environ.get("KIKI_OTEL_NO_SPEEDUPS", "").strip().lower() in ("1", "true", "yes", "on"):
    speedups = None


def new_instance_py(cls: type, template: dict[str, Any], /, **fields: Any) -> Any:
    """``_speedups.new_instance`` in Python: ``object.__new__(cls)``, filled.

    Through ``__dict__``, where the C function sets attributes: the same for the fields
    it is used for, which no descriptor of their classes handles.
    """
    instance: Any = object.__new__(cls)
    values = instance.__dict__
    values.update(template)
    values.update(fields)
    return instance


def new_tuple_py(cls: type, /, *items: Any) -> Any:
    """``_speedups.new_tuple`` in Python: ``tuple.__new__(cls, items)``."""
    return tuple.__new__(cls, items)


# Objects made on the request path without their constructors (a named tuple's or the SDK
# span's run Python code per call): in one C call each where the C module is built.
new_instance: Any = getattr(speedups, "new_instance", None) or new_instance_py
new_tuple: Any = getattr(speedups, "new_tuple", None) or new_tuple_py


def plain_fields(owner: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    """``vars(owner)`` when each of ``names`` is a plain attribute of ``owner``, else None.

    Plain: in its ``__dict__``, with no data descriptor of that name on its class (which
    would be read instead). The C paths read such attributes of objects they hold from
    that dict, the same value without the type's lookup ``getattr`` does each time.
    """
    fields = getattr(owner, "__dict__", None)
    if type(fields) is not dict:
        return None
    for name in names:
        if name not in fields:
            return None
        for klass in type(owner).__mro__:
            found = vars(klass).get(name)
            if found is not None:
                kind = type(found)
                if hasattr(kind, "__set__") or hasattr(kind, "__delete__"):
                    return None
                break
    return fields
