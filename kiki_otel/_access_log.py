"""The access line: one per request, so it skips structlog's call machinery when it can.

Through a structlog logger a line is a bound-logger call, a copy of its context and nine
processor calls, most of which work out what the middleware already knows: the logger name,
the level, the request span's ids. While the chain :func:`configure_logging` installed is
still structlog's configuration, :class:`DirectAccessLog` builds the same event dict, key for
key and in the same order, and hands it to the *same* processors that matter (timestamp,
context variables, the OTel emitter, the renderer) and the same output: the same line and the
same OTel record (tested byte for byte), ~20% cheaper a line and ~26k instructions less a
request (``bench/test_micro.py -k access_line``, ``bench/instructions.py``). Under any other
configuration (a user's own ``structlog.configure()``, ``structlog.testing.capture_logs()``)
the line goes through structlog as before (:class:`StructlogAccessLog`).

What the middleware calls is ``DirectAccessLog.call``: with the C module, the same line in
one C call (``_speedups.access_line``, whose twin and fallback is ``__call__``), given the
request's context and ids by the middleware: the event dict, the emitter's common case and
the JSON without a Python frame of their own (tested against the twin, item for item).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import structlog

from ._context import (
    CURRENT,
    client_request_id,
    client_request_id_get,
    current_get,
    current_span_context,
    hex_ids,
)
from ._json import json_dumps
from ._logging import (
    get_logger,
    installed_chain,
    iso_timestamp,
    iso_timestamp_py,
    structure_exception,
)
from ._native import speedups
from ._otlp_encode import native_json_line

__all__ = ["ACCESS_EVENT", "ACCESS_LOGGER", "AccessLog", "access_log"]

ACCESS_LOGGER = "kiki_otel.access"
ACCESS_EVENT = "http.request"


AccessLog = Callable[[str | None, str, str | None, int, float, Any], None]
"""Log a request: method, path, route, status, duration (ms), and the context the caller
made current with its span's ids (``(context, trace_id, span_id, flags, span_context,
hex_ids)``, or None); level error for a 5xx, info otherwise. Called while the request's
context is current."""


class StructlogAccessLog:
    """The line through a structlog logger, whatever the configuration."""

    def __init__(self) -> None:
        # Bound now (after configure_logging): each line skips the lazy proxy's rebuild.
        self._logger = get_logger(ACCESS_LOGGER).bind()
        self.call: AccessLog = self.__call__

    def __call__(
        self,
        method: str | None,
        path: str,
        route: str | None,
        status: int,
        duration_ms: float,
        current: Any = None,  # (structlog finds the current span itself)
    ) -> None:
        log = self._logger.error if status >= 500 else self._logger.info
        log(
            ACCESS_EVENT,
            method=method,
            path=path,
            route=route,
            status=status,
            duration_ms=duration_ms,
        )


class DirectAccessLog:
    """The line the installed chain would make, built directly (see the module docstring).

    The order of the chain is kept: the call's fields, ``event``, ``logger``, ``level``,
    ``timestamp``, context variables not already present, the current span's ids, a
    client's own request id, ``service``, the exception fields; then the OTel emitter and
    the renderer.
    """

    def __init__(self) -> None:
        chain = installed_chain()
        if chain is None:
            raise RuntimeError("kiki-otel's logging chain is not installed")
        self._chain = chain
        # The processor list as structlog holds it, and what it held when installed: a
        # ``capture_logs()`` that begins after this was built swaps the processors in place,
        # and the line goes to it through structlog, as a bound logger's would.
        self._live, self._installed = chain.processors, chain.installed_processors
        self._structlog = StructlogAccessLog()
        self._info = chain.min_level <= logging.INFO
        self._error = chain.min_level <= logging.ERROR
        self._merge = merge_contextvars()
        # structlog's JSON renderer over kiki's serializer: its call, without its frame
        renderer = chain.renderer
        self._dumps: Callable[..., bytes] | None = None
        self._default: object = None
        if (
            type(renderer) is structlog.processors.JSONRenderer
            and getattr(renderer, "_dumps", None) is json_dumps
            and set(getattr(renderer, "_dumps_kw", ())) == {"default"}
        ):
            self._dumps = json_dumps
            self._default = renderer._dumps_kw["default"]
        # The line's JSON in C when its values are plain (orjson's bytes; else orjson), and
        # its record's fields before the attributes, per level: one C call each.
        self._json_line = native_json_line if self._dumps is not None else None
        emitter = chain.emitter
        self._heads = {
            level: emitter.record_head(level, ACCESS_EVENT) if emitter is not None else None
            for level in ("info", "error")
        }
        self.call: AccessLog = self._native() or self.__call__
        """What the middleware calls: this in C (``_speedups.access_line``) when it is built."""

    def _native(self) -> AccessLog | None:
        native = getattr(speedups, "access_line", None)
        if native is None or self._json_line is None or CURRENT is None:
            return None
        chain, heads = self._chain, self._heads
        emitter = chain.emitter
        return native(  # type: ignore[no-any-return]
            self.__call__,
            self._live,
            self._installed,
            (self._info, self._error),
            self._merge,
            CURRENT,
            client_request_id,
            chain.service,
            structure_exception,
            emitter.emit_current if emitter is not None else None,
            (heads["info"], heads["error"]),
            ACCESS_LOGGER,
            self._dumps,
            self._default,
            chain.output.write,
            iso_timestamp_py,
            emitter.emit_current_spec() if emitter is not None else None,
        )

    def __call__(
        self,
        method: str | None,
        path: str,
        route: str | None,
        status: int,
        duration_ms: float,
        current: Any = None,
    ) -> None:
        if self._live != self._installed:
            self._structlog(method, path, route, status, duration_ms)
            return
        if status >= 500:
            if not self._error:
                return
            level = "error"
        elif self._info:
            level = "info"
        else:
            return
        chain = self._chain
        event = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "event": ACCESS_EVENT,
            "logger": ACCESS_LOGGER,
            "level": level,
        }
        now = time.time_ns()  # the line's timestamp and its record's
        event["timestamp"] = iso_timestamp(now, iso_timestamp_py)
        self._merge(None, level, event)
        # The current span, as add_correlation and the OTel record take it: the request
        # span (whose ids the caller holds), unless the app left a context of its own current.
        if current is not None and CURRENT is not None and current_get() is current[0]:
            span_context, ids = current[4], current[5]
        else:
            span_context = current_span_context()
            ids = hex_ids(span_context)
        if ids is not None:
            event["trace_id"] = event["request_id"] = ids[0]
            event["span_id"] = ids[1]
        client_id = client_request_id_get()
        if client_id is not None:
            event.setdefault("client_request_id", client_id)
        if "service" not in event:  # setdefault: C code a request would run only here
            event["service"] = chain.service
        if "exc_info" in event:  # only a context variable can bring it
            structure_exception(None, level, event)
        if chain.emitter is not None:
            head = self._heads[level]
            chain.emitter.emit_current(level, event, span_context, ACCESS_LOGGER, now, head)
        dumps = self._dumps
        if dumps is None:
            chain.output.write(chain.renderer(None, level, event))  # type: ignore[arg-type]
            return
        line = self._json_line(event) if self._json_line is not None else None
        chain.output.write(line if line is not None else dumps(event, self._default))


def merge_contextvars() -> Callable[[Any, str, dict[str, Any]], Any]:
    """The merge of structlog's context variables: in C (``_speedups.merge_contextvars``).

    The access line runs it on every request, where it is most of what structlog's context
    variables cost a line (~2.6k instructions a call in Python). The C one does what
    structlog's does for the prefix it knows; another prefix (a structlog that changed it)
    keeps structlog's own.
    """
    native = getattr(speedups, "merge_contextvars", None)
    if native is not None and structlog.contextvars.STRUCTLOG_KEY_PREFIX == "structlog_":
        return native  # type: ignore[no-any-return]
    return structlog.contextvars.merge_contextvars


def access_log() -> DirectAccessLog | StructlogAccessLog:
    """The direct access line while kiki's chain is structlog's configuration, else structlog's."""
    chain = installed_chain()
    if chain is not None and chain.is_current():
        return DirectAccessLog()
    return StructlogAccessLog()
