"""The optional C encoder (``kiki_otel/_speedups.c``); everything else is in pyproject.toml.

``optional=True``: where it cannot be compiled (no C compiler, no Python headers) the
install goes on without it and ``kiki_otel._otlp_encode`` encodes in Python, the same bytes.
"""

import sys

from setuptools import Extension, setup

# Optimised for size: a request runs each of its functions once, so what they cost is
# mostly instruction-cache misses, and smaller code misses less (-O3 -> -Os: ~80 fewer L1
# misses a request for ~0.5k more instructions; docs/performance-log.md, fourteenth round).
SIZE = ["/O1"] if sys.platform == "win32" else ["-Os"]

setup(
    ext_modules=[
        Extension(
            "kiki_otel._speedups",
            ["kiki_otel/_speedups.c"],
            optional=True,
            extra_compile_args=SIZE,
            libraries=[] if sys.platform == "win32" else ["m"],  # round(), for request_end
        ),
    ]
)
