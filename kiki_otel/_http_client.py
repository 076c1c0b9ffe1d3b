"""Outgoing HTTP (httpx): one client span per call, one ``traceparent`` of the current trace.

The contrib httpx instrumentation does the work (it replaces, never appends, the header).
Optionally also ``X-Request-ID`` for legacy services that read only that.

A URL's secrets stay out of telemetry, as on the server side: the client span's
``url.full`` and httpx's own ``HTTP Request: GET <url>`` log line get the query's sensitive
values replaced (contrib redacts only the credentials and four signature keys), and the log
line its credentials too. The calls health checks make log nothing: one INFO line per probe
per check, credentials and all, was the noise of every service.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import context as otel_context

from ._context import get_request_id
from ._settings import Settings

__all__ = ["HEALTH_PROBE", "instrument_httpx", "quiet_httpx_logs", "uninstrument_httpx"]

HEALTH_PROBE = otel_context.create_key("kiki-health-probe")
"""Set in the context of a health check's run: its calls' log lines are dropped."""


def redact_url(url: Any) -> str:
    """Return ``url`` with its credentials and sensitive query values replaced.

    ``REDACTED``, as the server span's ``url.query`` has them; ``url`` an ``httpx.URL``
    or text.
    """
    import httpx

    from ._http_server import _redact_query

    url = httpx.URL(url)
    if url.userinfo:
        url = url.copy_with(username="REDACTED", password="REDACTED")  # noqa: S106
    if url.query:
        url = url.copy_with(query=_redact_query(url.query.decode("ascii")).encode("ascii"))
    return str(url)


class _HttpxLogFilter(logging.Filter):
    """Filter httpx's ``HTTP Request: <method> <url> ...`` lines.

    None for health checks' calls, the URL redacted for the others.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if otel_context.get_value(HEALTH_PROBE):
            return False
        args = record.args
        if isinstance(args, tuple) and len(args) >= 2 and type(args[1]).__name__ == "URL":
            try:
                record.args = (args[0], redact_url(args[1]), *args[2:])
            except Exception:  # a URL we cannot read: the line, without it
                record.args = (args[0], "<url>", *args[2:])
        return True


_httpx_filter = _HttpxLogFilter()


def quiet_httpx_logs() -> None:
    """Install the filter on httpx's logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if _httpx_filter not in logger.filters:
        logger.addFilter(_httpx_filter)


def _hooks(request_id_header: str | None) -> tuple[Any, Any]:
    """The request hooks: ``url.full`` redacted; the request id added where none is set.

    An ``X-Request-ID`` the app set itself on the call (a caller's legacy id it forwards)
    is kept: the app chose it.
    """

    def hook(span: Any, request: Any) -> None:
        url = getattr(request, "url", None)
        if url is not None and span.is_recording():
            full = redact_url(url)
            if "REDACTED" in full:
                span.set_attribute("url.full", full)
        if request_id_header is not None:
            request_id = get_request_id()
            if request_id is not None and request_id_header not in request.headers:
                request.headers[request_id_header] = request_id

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
    header = settings.http.request_id_header if settings.http.propagate_request_id else None
    hook, async_hook = _hooks(header)
    instrumentor.instrument(request_hook=hook, async_request_hook=async_hook)
    return True


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx` (tests: its tracer is bound to the provider of the time)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
