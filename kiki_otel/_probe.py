"""Whether an SDK function is still the code a fast path runs inline instead of calling it.

The fast paths (``_fast_span``, ``_fast_histogram``) skip a few tiny SDK methods whose whole
body they repeat: a frame per request for a line of code. Each keeps a copy of the SDK
function it replaces (from the pinned release) and uses its path only while the SDK's
function compiles to the same code: bytecode, the names it reads, its constants. A release
that changes one turns that path off, not its answers wrong.
"""

from __future__ import annotations

from typing import Any

__all__ = ["same_code"]


def same_code(sdk: Any, ours: Any) -> bool:
    """True if the function ``sdk`` compiles to the code of the function ``ours``."""
    theirs, mine = getattr(sdk, "__code__", None), getattr(ours, "__code__", None)
    if theirs is None or mine is None:
        return False
    fields = ("co_code", "co_names", "co_consts", "co_argcount", "co_freevars")
    # the flags but the __future__ imports of each one's module (they change no bytecode)
    return theirs.co_flags & _CODE_FLAGS == mine.co_flags & _CODE_FLAGS and all(
        getattr(theirs, f) == getattr(mine, f) for f in fields
    )


_CODE_FLAGS = 0xFFFF
"""``co_flags`` below the ``__future__`` ones (``CO_OPTIMIZED`` ... ``CO_ASYNC_GENERATOR``)."""
