"""The optional C encoder (``kiki_otel/_speedups.c``); everything else is in pyproject.toml.

``optional=True``: where it cannot be compiled (no C compiler, no Python headers) the
install goes on without it and ``kiki_otel._otlp_encode`` encodes in Python, the same bytes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("kiki_otel._speedups", ["kiki_otel/_speedups.c"], optional=True),
    ]
)
