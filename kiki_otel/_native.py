"""The C module (``_speedups.c``) when it was built and is not switched off, else None.

One place decides, so every module that uses a C path (the encoder, the access line, the
histogram) uses it or not together: it is optional (a wheel built without a C compiler has
none) and ``KIKI_OTEL_NO_SPEEDUPS=1`` turns it off, for a bug report or the benchmark's
pure-Python scenario.
"""

from __future__ import annotations

import os
from typing import Any

speedups: Any
try:
    from . import _speedups as speedups
except ImportError:  # built without a C compiler: the Python paths do it all
    speedups = None
if os.environ.get("KIKI_OTEL_NO_SPEEDUPS", "").strip().lower() in ("1", "true", "yes", "on"):
    speedups = None
