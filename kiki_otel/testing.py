"""Helpers for tests of kiki-otel and of services that use it.

``reset()`` undoes ``configure()``: it shuts our providers down and clears OpenTelemetry's
set-once globals, so each test can configure afresh. Never call it in production code.
"""

from __future__ import annotations

from opentelemetry import _logs, metrics, trace
from opentelemetry.util._once import Once

from . import _configure
from ._http_client import uninstrument_httpx
from ._logging import reset_logging

__all__ = ["reset"]


def _clear_globals() -> None:
    # OpenTelemetry offers no public reset; its own test utilities poke the same attributes.
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    metrics._internal._METER_PROVIDER = None
    metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    _logs._internal._LOGGER_PROVIDER = None
    _logs._internal._LOGGER_PROVIDER_SET_ONCE = Once()


def reset(timeout: float = 2.0) -> None:
    """Shut down what ``configure()`` built and forget it, OTel globals and logging included."""
    telemetry = _configure.current()
    if telemetry is not None:
        telemetry.shutdown(timeout)
    _configure._forget()
    uninstrument_httpx()
    reset_logging()
    _clear_globals()
