"""Outgoing HTTP (httpx): one client span per call, one ``traceparent`` of the current trace.

The contrib httpx instrumentation does the work (it replaces, never appends, the header).

Optionally also ``X-Request-ID`` for legacy services that read only that.
"""

from __future__ import annotations

import os
from typing import Any

from ._context import get_request_id
from ._settings import Settings

__all__ = ["instrument_httpx", "uninstrument_httpx"]


def _request_id_hook(header: str) -> tuple[Any, Any]:
    def hook(_span: Any, request: Any) -> None:
        request_id = get_request_id()
        if request_id is not None:
            request.headers[header] = request_id

    async def async_hook(span: Any, request: Any) -> None:
        hook(span, request)

    return hook, async_hook


def instrument_httpx(settings: Settings) -> bool:
    """Instrument httpx globally once; returns False if disabled or already instrumented."""
    if not settings.http.instrument_httpx:
        return False
    # Contrib instrumentations read this once, at import of their semconv helper: ask for
    # the stable HTTP names (http.client.request.duration in seconds) unless the user chose.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", settings.semconv_stability_opt_in)
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return False
    hooks: dict[str, Any] = {}
    if settings.http.propagate_request_id:
        hooks["request_hook"], hooks["async_request_hook"] = _request_id_hook(
            settings.http.request_id_header
        )
    instrumentor.instrument(**hooks)
    return True


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx` (tests: its tracer is bound to the provider of the time)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
