"""One structlog processor chain, two outputs: a line on stdout and an OTel log record.

The JSON (or console) line and the OTel record carry the same fields (as attributes).

stdlib logging (uvicorn, httpx, libraries) is bridged into the *same* chain by a handler on
the root logger, so there is one format and one correlation rule for every line. The OTel
emitter never re-enters itself and never forwards the SDK's own exporter logs, so a dead
collector cannot cause a log storm or a recursion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from contextvars import Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

import structlog
from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from ._context import (
    IDS_BY_NAME,
    client_request_id_get,
    current_ids,
    current_span_context,
    ids_of,
    marked_span_context,
)
from ._json import json_dumps, safe_repr
from ._native import speedups
from ._otlp_encode import log_head, native_log_event
from ._otlp_http import DirectLogs, direct_logs
from ._settings import Settings

__all__ = ["BRIDGE_MARK", "OwnLogger", "configure_logging", "get_logger", "reset_logging"]

BRIDGE_MARK = "_kiki_otel_bridge"

_SEVERITY = {
    "debug": (SeverityNumber.DEBUG, "DEBUG"),
    "info": (SeverityNumber.INFO, "INFO"),
    "warning": (SeverityNumber.WARN, "WARN"),
    "warn": (SeverityNumber.WARN, "WARN"),
    "error": (SeverityNumber.ERROR, "ERROR"),
    "exception": (SeverityNumber.ERROR, "ERROR"),
    "critical": (SeverityNumber.FATAL, "FATAL"),
}
# Fields that are the record's own parts, not attributes, when sent as an OTel log record.
_RECORD_FIELDS = frozenset({"event", "timestamp", "level", "trace_id", "span_id"})
_ISO_UTC = "%Y-%m-%dT%H:%M:%S.%fZ"  # the same shape as structlog's TimeStamper(utc=True)
_STDLIB_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}
# The OTel libraries' own chatter: rate-limited (a dead collector warns per batch, a hostile
# baggage or tracestate header per request) and cut short (they echo the header).
_NOISY_PREFIXES = ("opentelemetry",)
_NOISY_MESSAGE_MAX = 512
_NO_EXPORT_PREFIXES = ("opentelemetry", "grpc", "urllib3", "kiki_otel._export")


_OWN_FIELDS = frozenset(
    {
        "level",
        "timestamp",
        "logger",
        "service",
        "trace_id",
        "span_id",
        "request_id",
        "client_request_id",
    }
)
"""The line's fields that are kiki's: a call's field of such a name is moved aside."""
_STDLIB_OWN_FIELDS = _OWN_FIELDS | {"event"}
"""And a stdlib record's ``extra`` may name the message's field too (structlog's may not)."""
CLASH_PREFIX = "extra_"
"""What a call's clashing field is renamed with: ``extra_level``, ``extra_timestamp``..."""


def aside(key: str, fields: Any) -> str:
    """The name a call's field ``key`` that clashes with kiki's own is kept under.

    ``extra_<key>`` (``extra_extra_<key>`` if the call has that one too, and so on): a
    business field named ``level`` or ``timestamp`` is neither lost nor allowed to change
    the line's level (and its OTel severity) or its time.
    """
    renamed = CLASH_PREFIX + key
    while renamed in fields:
        renamed = CLASH_PREFIX + renamed
    return renamed


def add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """``logger``: the name given to ``get_logger(name)`` (stdlib records bring their own).

    The chain's first processor, so also where the call's own fields (keywords, bound
    context) that clash with the line's are moved aside, before kiki's are set: one
    set test per line when none clashes.
    """
    if not _OWN_FIELDS.isdisjoint(event_dict):
        for key in [key for key in event_dict if key in _OWN_FIELDS]:
            event_dict[aside(key, event_dict)] = event_dict.pop(key)
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


_second_prefix: tuple[int, str] = (-1, "")


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """``timestamp``: exactly structlog's ``TimeStamper(fmt="iso", utc=True)``, cheaper.

    Same clock and floor rounding as ``datetime.now(UTC)``, same ``isoformat()`` shape
    (no fraction when the microseconds are 0), ``Z`` for UTC; the date/time part is
    formatted once per second instead of per line.
    """
    event_dict["timestamp"] = iso_timestamp(time.time_ns(), iso_timestamp_py)
    return event_dict


def iso_timestamp_py(time_ns: int, _fallback: object = None) -> str:
    """:func:`add_timestamp`'s text for a ``time.time_ns()`` reading.

    :data:`iso_timestamp` in Python, and its fallback in C (before 1970, past 2262).
    """
    global _second_prefix
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    cached_second, prefix = _second_prefix
    if cached_second != seconds:
        prefix = datetime.fromtimestamp(seconds, UTC).isoformat()[:19]
        _second_prefix = (seconds, prefix)
    micros = nanos // 1000
    # "%06d" by str() and a slice: neither the format-spec parser nor str's % (see
    # _context.remember_hex_ids, its other user in a request)
    return f"{prefix}.{str(1_000_000 + micros)[1:]}Z" if micros else prefix + "Z"


iso_timestamp: Callable[[int, Callable[[int], str]], str] = (
    getattr(speedups, "iso_timestamp", None) or iso_timestamp_py
)
"""``iso_timestamp(time_ns, iso_timestamp_py)``: :func:`iso_timestamp_py` in C, one call
instead of its frame (each log line and the access line take one)."""


def add_correlation(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id``, ``span_id`` and ``request_id`` (= trace id) of the current span."""
    ids = current_ids()
    if ids is not None:
        event_dict["trace_id"] = event_dict["request_id"] = ids[0]
        event_dict["span_id"] = ids[1]
    client_id = client_request_id_get()
    if client_id is not None:
        event_dict.setdefault("client_request_id", client_id)
    return event_dict


class AddService:
    """Stamp ``service`` on every line, so a shared log store can tell services apart."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", self._service)
        return event_dict


def structure_exception(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Turn ``exc_info`` into ``exception: {type, message, stacktrace}`` (semconv's fields)."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if exc_info[0] is None:
        return event_dict
    try:
        message = str(exc_info[1])
    except Exception:  # an exception whose __str__ raises must not make log.exception raise
        message = f"<unprintable {exc_info[0].__qualname__}>"
    event_dict["exception"] = {
        "type": exc_info[0].__qualname__,
        "message": message,
        "stacktrace": "".join(traceback.format_exception(*exc_info)),
    }
    return event_dict


_PLAIN_TYPES = frozenset({str, bool, int, float, type(None)})
"""Exact types an OTel attribute takes as they are (subclasses go through :func:`_attribute`)."""


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _attribute(value: Any) -> Any:
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)  # OTLP ints are 64-bit: a bigger one would be dropped
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(v, str | bool | float) or (isinstance(v, int) and _INT64_MIN <= v <= _INT64_MAX)
        for v in value
    ):
        return list(value)
    # As the JSON line shows it: a value rendered as a JSON string (a UUID, a datetime, a
    # repr) is that text, not a JSON document with its quotes; a mapping or a mixed list
    # stays JSON text.
    rendered = json_dumps(value, default=_line_default)
    if rendered[:1] == b'"':
        text: str = json.loads(rendered)
        return text
    return rendered.decode()


def _line_default(value: Any) -> Any:
    """What structlog's JSON renderer falls back to: ``__structlog__()``, else the repr."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else safe_repr(value)


_LOGGERS_MAX = 512
"""Logger names whose OTel logger the emitter keeps; more distinct names get theirs per line."""
_IDLE, _BUSY, _WORKER = "idle", "busy", "worker"
"""A thread's state for :class:`OTelEmitter` (compared by identity)."""


class OTelEmitter:
    """Send each event as an OTel log record with the same fields as structured attributes."""

    def __init__(self, provider: LoggerProvider, *, trace_based: bool = False) -> None:
        self._provider = provider
        self._trace_based = trace_based  # only records of sampled traces, or of no trace
        self._local = threading.local()
        # name -> (SDK logger, its direct path to the fast exporter or None); the SDK's
        # get_logger takes a lock per call.
        self._loggers: dict[str, tuple[Any, DirectLogs | None]] = {}

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        name = str(event_dict.get("logger", ""))
        local = self._local
        state = getattr(local, "state", None)
        if state is None:  # first record on this thread
            # An SDK worker thread (named at creation): exporting its logs could loop.
            worker = threading.current_thread().name.startswith("Otel")
            state = local.state = _WORKER if worker else _IDLE
        if state is not _IDLE or name.startswith(_NO_EXPORT_PREFIXES):
            return event_dict  # a worker, or a record logged while emitting one
        local.state = _BUSY
        try:
            self._emit(method, event_dict, name)
        except Exception:  # noqa: S110 - telemetry must never break logging, nor log about itself
            pass
        finally:
            local.state = _IDLE
        return event_dict

    def emit_current(
        self,
        level: str,
        event_dict: EventDict,
        span_context: SpanContext,
        name: str,
        timestamp: int,
        head: bytes | None = None,
    ) -> None:
        """``self(None, level, event_dict)``, for a caller holding the current span context.

        The access line's path: its logger (``name``, the event's ``logger``) is exported
        and it runs on a request thread, so once this thread's state and its logger's entry
        are known, the record goes straight to the direct path (the emitter's own checks,
        fewer calls); anything else takes :meth:`__call__`. ``timestamp``: the direct
        record's time (``time.time_ns()``, the clock read the line's own timestamp came from).
        ``head``: :meth:`record_head` of the event's level and ``event``, when the caller
        knows it: then a record of plain fields is encoded in one C call.
        """
        try:
            entry = self._loggers.get(name)
            direct = entry[1] if entry is not None else None
            if direct is None or getattr(self._local, "state", None) is not _IDLE:
                self(None, level, event_dict)
                return
            trace_id, span_id, flags, valid = ids_of(type(span_context), IDS_BY_NAME)(span_context)
            if self._trace_based and valid and not flags & TraceFlags.SAMPLED:
                return
            if not direct.usable(len(event_dict)):
                self(None, level, event_dict)
                return
            if head is not None and native_log_event is not None:
                try:
                    payload = native_log_event(
                        timestamp, head, event_dict, _RECORD_FIELDS, trace_id, span_id, flags
                    )
                except Exception:  # the Python encoder below reports it
                    payload = None
                if payload is not None:
                    direct.queue(payload)
                    return
            severity, text = _SEVERITY.get(level, (SeverityNumber.INFO, "INFO"))
            body = str(event_dict.get("event", ""))
            if not direct.emit_event(
                timestamp, severity, text, body, event_dict, _RECORD_FIELDS, span_context
            ):
                self(None, level, event_dict)
        except Exception:  # noqa: S110 - as __call__: telemetry must never break logging
            pass

    def emit_current_spec(self) -> tuple[Any, ...] | None:
        """What ``_speedups.access_line`` reads to run :meth:`emit_current` in C.

        Its common case, with the method's own checks in its order (for anything else it
        calls the method): the loggers, the thread-local state, the idle state, the
        trace-based flag and the fields that are no attributes. None without the C encoder.
        """
        if native_log_event is None:
            return None
        return (self._loggers, self._local, _IDLE, self._trace_based, _RECORD_FIELDS)

    @staticmethod
    def record_head(level: str, body: str) -> bytes:
        """The encoded severity, its text and the body of a record at ``level``."""
        severity, text = _SEVERITY.get(level, (SeverityNumber.INFO, "INFO"))
        return log_head(severity, text, body)

    def _emit(self, method: str, event_dict: EventDict, name: str) -> None:
        if self._trace_based:
            span_context = current_span_context()
            if span_context.is_valid and not span_context.trace_flags.sampled:
                return
        # the call's level (a field named "level" is the line's own, never the severity)
        severity, text = _SEVERITY.get(method, (SeverityNumber.INFO, "INFO"))
        name = name or "kiki_otel"
        entry = self._loggers.get(name)
        if entry is None:
            logger = self._provider.get_logger(name)
            entry = (logger, direct_logs(self._provider, logger))
            if len(self._loggers) < _LOGGERS_MAX:  # a name per tenant or per id: not kept
                self._loggers[name] = entry
        logger, direct = entry
        body = str(event_dict.get("event", ""))
        if (
            direct is not None
            and direct.usable(len(event_dict))  # at least as many fields as attributes
            and direct.emit_event(time.time_ns(), severity, text, body, event_dict, _RECORD_FIELDS)
        ):
            return  # every field was a plain attribute: encoded straight from the event
        attributes, clean = _attributes_of(event_dict)
        if direct is not None and clean and direct.usable(len(attributes)):
            direct.emit(time.time_ns(), severity, text, body, attributes)
            return
        logger.emit(
            timestamp=time.time_ns(),
            severity_number=severity,
            severity_text=text,
            body=body,
            attributes=attributes,
        )


def _attributes_of(event_dict: EventDict) -> tuple[dict[str, Any], bool]:
    """The record's attributes, and whether all their keys are non-empty strs.

    The event's fields but the record's own, converted to attribute values; a key that is
    not a non-empty str leaves it to the SDK to clean.
    """
    attributes: dict[str, Any] = {}
    clean = True
    for key, value in event_dict.items():
        if key in _RECORD_FIELDS:
            continue
        kind = type(value)  # most fields: ~10x cheaper than isinstance(union)
        if kind in _PLAIN_TYPES and (kind is not int or _INT64_MIN <= value <= _INT64_MAX):
            attributes[key] = value
            clean = clean and type(key) is str and key != ""
        elif key == "exception" and isinstance(value, dict):
            for part, text_value in value.items():
                attributes[f"exception.{part}"] = text_value
                clean = clean and type(text_value) is str
        else:
            attributes[key] = _attribute(value)
            clean = clean and type(key) is str and key != ""
    return attributes, clean


class _Output:
    """Writes rendered lines to the *current* ``sys.stdout``, so redirection and capture work.

    JSON bytes go straight to its binary buffer, skipping a str round trip.

    A stdout that fails (the reading end of its pipe gone, a full disk, a closed stream)
    drops the line instead of raising: logging must not fail a request or a shutdown flush
    (the OTel record of the line is emitted before it is rendered, so it is not lost). The
    first failure after a good write is reported once on the interpreter's stderr, with
    the count of lines dropped so far.
    """

    def __init__(self) -> None:
        # Reentrant: a signal handler that logs may run while this thread is in write().
        self._lock = threading.RLock()
        self.dropped = 0
        self._failing = False
        native = getattr(speedups, "output_write", None)
        self.write: Callable[[str | bytes], None] = (
            native(self._write, self, sys, self._lock) if native is not None else self._write
        )
        """Write one line (:meth:`_write`; in C for a line of bytes, when it is built)."""

    def _write(self, line: str | bytes) -> None:
        stream = sys.stdout
        binary = getattr(stream, "buffer", None)
        with self._lock:
            try:
                if isinstance(line, bytes) and binary is not None:
                    stream.flush()  # keep order with anything written to the text layer
                    binary.write(line + b"\n")
                    binary.flush()
                else:
                    text = line.decode() if isinstance(line, bytes) else line
                    stream.write(text + "\n")
                    stream.flush()
            except (OSError, ValueError) as error:  # ValueError: write to a closed file
                self._lost(error)
            else:
                self._failing = False

    def _lost(self, error: Exception) -> None:
        self.dropped += 1
        if self._failing:
            return
        self._failing = True
        try:
            sys.__stderr__.write(  # type: ignore[union-attr]
                f"kiki_otel: stdout write failed ({type(error).__name__}: {error}); "
                f"log lines are dropped from stdout until it recovers ({self.dropped} so far), "
                "OTel log records are still exported\n"
            )
            sys.__stderr__.flush()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):  # no usable stderr either
            pass


class _OutputLoggerFactory:
    """structlog's logger factory: an :class:`_OutputLogger` named as ``get_logger(name)``."""

    def __init__(self, output: _Output) -> None:
        self._output = output

    def __call__(self, *args: Any) -> _OutputLogger:
        return _OutputLogger(self._output, args[0] if args else None)


class _OutputLogger:
    """The structlog "wrapped logger": every level method writes the rendered line."""

    def __init__(self, output: _Output, name: str | None) -> None:
        self._output = output
        self.name = name

    def msg(self, line: str | bytes) -> None:
        self._output.write(line)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class StdlibBridge(logging.Handler):
    """Routes stdlib records into the same processor chain and output as structlog events."""

    def __init__(self, processors: list[Processor], output: _Output) -> None:
        super().__init__()
        self._processors = processors
        self._output = output
        self.addFilter(ExporterNoiseFilter())
        setattr(self, BRIDGE_MARK, True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            # the severity's name: a custom level's (TRACE, "Level 25") is its standard band
            method = _LEVEL_METHODS.get(record.levelno) or _band(record.levelno)
            event_dict: MutableMapping[str, Any] = {
                # without the newline a text log ends its line with (uvicorn's "Exception in
                # ASGI application\n"): one JSON line holds one event
                "event": record.getMessage().rstrip("\r\n"),
                "level": level,
                "logger": record.name,
                "timestamp": datetime.fromtimestamp(record.created, UTC).strftime(_ISO_UTC),
            }
            for key, value in vars(record).items():
                name = key if type(key) is str else str(key)  # extra={1: ...} is allowed
                if name not in _STDLIB_ATTRS and not name.startswith("_"):
                    if name in _STDLIB_OWN_FIELDS:  # extra={"level": ...}: kept, as extra_level
                        name = aside(name, event_dict.keys() | vars(record).keys())
                    event_dict[name] = value
            token = None
            if record.exc_info and record.exc_info[0] is not None:
                event_dict["exc_info"] = record.exc_info
                token = _enter_marked_request(record.exc_info[1])
            try:
                result: Any = event_dict
                for processor in self._processors:
                    result = processor(None, method, result)
            finally:
                if token is not None:
                    otel_context.detach(token)
            self._output.write(result)
        except Exception:
            self.handleError(record)


_LEVEL_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _band(levelno: int) -> str:
    """The standard level a custom stdlib level falls in (the highest not above it)."""
    for number in sorted(_LEVEL_METHODS, reverse=True):
        if levelno >= number:
            return _LEVEL_METHODS[number]
    return "debug"


def _enter_marked_request(error: BaseException | None) -> Token[Context] | None:
    """Outside any trace, make the request an exception escaped from current again.

    The server's "Exception in ASGI application" line is logged after the middleware left
    the request: with the request's span context current (non-recording), the line and its
    OTel record get the request's ids like every other line of it. Returns the token to
    detach, or None.
    """
    span_context = marked_span_context(error)
    if span_context is None or get_current_span().get_span_context().is_valid:
        return None
    return otel_context.attach(set_span_in_context(NonRecordingSpan(span_context)))


class ExporterNoiseFilter(logging.Filter):
    """Few records per OTel library logger while it keeps warning, each cut to 512 chars.

    A dead collector makes every exporter warn on every retry of every batch, and the SDK's
    metrics exporter on every export (each minute). One record per ``interval`` seconds per
    logger at first; while the logger keeps warning (a record within one current interval of
    the last allowed time) the interval doubles, up to ``longest``: a collector down for a day
    costs a few dozen lines, not one a minute. A logger quiet for longer than its interval
    starts again from ``interval``. Each record says how many were held back before it.
    """

    def __init__(
        self,
        interval: float = 30.0,
        longest: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._longest = longest
        self._clock = clock
        self._next: dict[str, tuple[float, float]] = {}  # name -> (allowed from, interval)
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_NOISY_PREFIXES):
            return True
        now = self._clock()
        with self._lock:
            allowed, interval = self._next.get(record.name, (0.0, 0.0))
            if now < allowed:
                self._held[record.name] = self._held.get(record.name, 0) + 1
                return False
            again = interval > 0 and now - allowed <= interval  # the same outage: back off
            interval = min(interval * 2, self._longest) if again else self._interval
            self._next[record.name] = (now + interval, interval)
            record.suppressed = self._held.pop(record.name, 0)
        message = record.getMessage()
        if len(message) > _NOISY_MESSAGE_MAX:
            record.msg, record.args = message[:_NOISY_MESSAGE_MAX] + "...", None
        return True


def _renderer(settings: Settings) -> Processor:
    if settings.log_format == "console":
        colors = bool(getattr(sys.stdout, "isatty", lambda: False)())
        return ConsoleRenderer(colors=colors)
    return structlog.processors.JSONRenderer(serializer=json_dumps)


class ConsoleRenderer:
    """structlog's console renderer, given the traceback as text.

    :func:`structure_exception` makes ``exception`` a dict (type, message, stacktrace) for
    the JSON line and the OTel record; structlog's renderer appends ``exception`` to the
    line as a str, and raised on the dict.
    """

    def __init__(self, *, colors: bool) -> None:
        self._render = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        exception = event_dict.get("exception")
        if isinstance(exception, dict):
            event_dict["exception"] = str(exception.get("stacktrace", exception)).rstrip("\n")
        return self._render(logger, method, event_dict)


_SERVER_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "gunicorn.access",
)
_SERVER_ACCESS_LOGGERS = frozenset({"uvicorn.access", "gunicorn.access"})
_reclaim_registered = False
_replaces_server_access = False
"""kiki's access line is on, so the servers' own access logs stay off."""


def _route_stdlib(bridge: StdlibBridge, settings: Settings) -> None:
    global _reclaim_registered, _replaces_server_access, _bridge, _disabled_before
    _replaces_server_access = settings.http.access_log
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)  # one output: basicConfig/uvicorn handlers would duplicate
    root.addHandler(bridge)
    root.setLevel(settings.log_level)
    _bridge = bridge
    _disabled_before = frozenset(_disabled_loggers())  # a config's before configure(): its own
    _warned.clear()
    # uvicorn/gunicorn install their own handlers before importing the app: send their
    # records through the root chain instead, and drop their access logs (ours replaces them).
    _route_server_loggers()
    if not _reclaim_registered and hasattr(os, "register_at_fork"):
        # gunicorn --preload: configure() ran in the master, and the worker object, built
        # there before each fork, gives uvicorn's loggers gunicorn's handlers again.
        os.register_at_fork(after_in_child=_route_server_loggers)
        _reclaim_registered = True


def reclaim_server_loggers() -> None:
    """When the lifespan starts: :func:`check_logging`, then :func:`_route_server_loggers`.

    A server started from the app's own code (``uvicorn.run(app)`` without
    ``log_config=None``) configures its logging after configure() ran, which gave uvicorn's
    loggers their text handlers back (and a second access line per request); and by then
    the app's own imports (an Alembic ``env.py``, a team's logging module) have run.
    """
    check_logging()
    _route_server_loggers()


def _route_server_loggers() -> None:
    """Route the servers' loggers through the root chain (while kiki's logging is installed).

    Run by configure(), in every forked child, and when the lifespan starts (see
    :func:`reclaim_server_loggers`).

    A server's access logger stays off when kiki's access line replaces it, and when the
    server's own is off: no handlers and no propagation, as ``uvicorn --no-access-log``
    leaves uvicorn's (and gunicorn its own without ``--access-logfile``). Off means exactly
    that state: uvicorn checks ``hasHandlers()`` once per connection and then skips the line
    altogether, where a propagating but disabled logger still had each request format its
    client address and quoted path for a call that drops them.

    Also runs in every forked child: no lock is taken (plain attribute writes), nothing logs.
    """
    if _installed is None:  # reset_logging() since: not ours to route
        return
    for name in _SERVER_LOGGERS:
        named = logging.getLogger(name)
        access = name in _SERVER_ACCESS_LOGGERS
        off = access and (_replaces_server_access or not (named.handlers or named.propagate))
        named.handlers = []
        named.propagate = not off
        if access:  # the others keep whatever a logging config decided
            named.disabled = off


def configure_logging(
    settings: Settings, service: str, logger_provider: LoggerProvider | None
) -> None:
    """Install the chain for structlog and stdlib; idempotent (re-running replaces, never adds)."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_correlation,
        AddService(service),
        structure_exception,
    ]
    if logger_provider is not None and settings.log_to_otel and settings.logs_exporter != "none":
        shared.append(OTelEmitter(logger_provider, trace_based=settings.log_trace_based))
    renderer = _renderer(settings)
    shared.append(renderer)
    output = _Output()
    processors: list[Processor] = [
        add_logger_name,
        structlog.processors.add_log_level,
        add_timestamp,
        *shared,
    ]
    min_level = logging.getLevelNamesMapping()[settings.log_level]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=_OutputLoggerFactory(output),
        # Not cached: a proxy used before configure() (an import-time log line) or across
        # testing.reset()/structlog.testing.capture_logs() must follow the current config.
        # Costs ~1.4 us a line; the per-request access logger binds once instead.
        cache_logger_on_first_use=False,
    )
    global _installed
    emitter = shared[-2] if isinstance(shared[-2], OTelEmitter) else None
    _installed = Chain(structlog.get_config(), output, emitter, renderer, service, min_level)
    _route_stdlib(StdlibBridge(shared, output), settings)
    _install_excepthooks()


class Chain:
    """What :func:`configure_logging` installed, for the access line's direct path.

    While structlog's configuration still holds the very processor list (with the same
    processors: ``capture_logs()`` swaps them in place), bound-logger class and logger
    factory given to it, the chain is the one described here (a user's
    ``structlog.configure(wrapper_class=...)`` alone changes the level, say).
    """

    _KEYS = ("processors", "wrapper_class", "logger_factory")

    def __init__(
        self,
        config: dict[str, Any],
        output: _Output,
        emitter: OTelEmitter | None,
        renderer: Processor,
        service: str,
        min_level: int,
    ) -> None:
        self._config = tuple(config[key] for key in self._KEYS)
        self.processors: list[Processor] = config["processors"]
        self.installed_processors = list(self.processors)
        self.output = output
        self.emitter = emitter
        self.renderer = renderer
        self.service = service
        self.min_level = min_level

    def is_current(self) -> bool:
        config = structlog.get_config()
        return (
            self.processors == self.installed_processors
            and all(config[key] is held for key, held in zip(self._KEYS, self._config, strict=True))
            # a bound logger starts from its context; the direct line from an empty dict
            and config["context_class"] is dict
        )


_installed: Chain | None = None
_bridge: StdlibBridge | None = None
_disabled_before: frozenset[str] = frozenset()
_warned: set[str] = set()
"""What :func:`check_logging` has warned about since :func:`configure_logging`."""

_REPLACED_HINTS = {
    "structlog.configure()": (
        "a structlog.configure() after kiki_otel.configure() replaced its processors: "
        "structlog lines lose trace_id/request_id/service and are not exported; remove it "
        "(kiki_otel.configure() sets structlog up: KIKI_OTEL_LOG_LEVEL, KIKI_OTEL_LOG_FORMAT)"
    ),
    "root handler": (
        "a logging config (dictConfig, fileConfig as in Alembic's env.py, basicConfig("
        "force=True)) after kiki_otel.configure() replaced the root logger's handler: stdlib "
        "lines are no JSON, uncorrelated and not exported; leave the root logger out of it, "
        "or run it before kiki_otel.configure()"
    ),
    "disabled loggers": (
        "a logging config after kiki_otel.configure() disabled loggers (uvicorn's too): "
        "their lines are lost; pass disable_existing_loggers=False"
    ),
}


def _disabled_loggers() -> list[str]:
    """The stdlib loggers a config disabled (the servers' access loggers are kiki's to turn off)."""
    return sorted(
        name
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
        and logger.disabled
        and name not in _SERVER_ACCESS_LOGGERS
    )


def check_logging() -> None:
    """Warn once when structlog's or stdlib's configuration replaced kiki's after configure().

    A team's own ``structlog.configure()``, or a ``dictConfig``/``fileConfig`` (Alembic's
    ``env.py``), run after configure() silently turns off the JSON, correlation and OTel
    export it promises. Called when the lifespan starts and when shutdown begins (at the
    latest); each kind is named once, with what to do. Never re-installed over it: that
    configuration was the user's explicit choice. The line goes through kiki's own chain
    (the bridge), so it reaches stdout as JSON and the collector whatever was replaced.
    """
    chain, bridge = _installed, _bridge
    if chain is None or bridge is None:
        return
    try:
        disabled = [name for name in _disabled_loggers() if name not in _disabled_before]
        found = {
            "structlog.configure()": structlog.get_config()["processors"] is not chain.processors,
            "root handler": bridge not in logging.getLogger().handlers,
            "disabled loggers": bool(disabled),
        }
        new = [kind for kind, replaced in found.items() if replaced and kind not in _warned]
        if not new:
            return
        _warned.update(new)
        fields: dict[str, Any] = {
            "replaced": new,
            "hint": "; ".join(_REPLACED_HINTS[kind] for kind in new),
        }
        if "disabled loggers" in new:  # the servers' first: their lines are the ones missed
            disabled.sort(key=lambda name: name not in _SERVER_LOGGERS)
            fields["disabled_loggers"] = disabled[:20]
            fields["disabled_count"] = len(disabled)
        emit_own(logging.WARNING, "kiki_otel.logging_replaced", fields)
    except Exception:  # noqa: S110 - a check must never break a startup or a shutdown
        pass


def emit_own(
    levelno: int, event: str, fields: dict[str, Any], exc_info: Any = None, name: str = "kiki_otel"
) -> None:
    """Log one of kiki's lines through kiki's chain itself (the stdlib bridge), never raising.

    For what must reach stdout as JSON and the collector even when the user's structlog or
    root-logger configuration replaced kiki's: the warning about it, an uncaught exception.
    """
    bridge = _bridge
    if bridge is None:
        return
    record = logging.LogRecord(name, levelno, "", 0, event, None, exc_info)
    record.__dict__.update(fields)
    with contextlib.suppress(Exception):
        bridge.handle(record)


_previous_hooks: tuple[Any, Any] | None = None
"""``(sys.excepthook, threading.excepthook)`` as :func:`_install_excepthooks` found them."""


def _install_excepthooks() -> None:
    """Log uncaught exceptions (main thread and threads) as JSON lines and OTel records.

    A script or worker that dies of an exception otherwise leaves only Python's plain-text
    traceback on stderr: no line in the log store and no record at the collector says why.
    The hooks run before the atexit flush, so the record is exported. The previous hooks
    still run after (Python's prints the traceback, a tool's own hook does its part).
    """
    global _previous_hooks
    if _previous_hooks is None:
        _previous_hooks = (sys.excepthook, threading.excepthook)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread


def _restore_excepthooks() -> None:
    """Put back the hooks :func:`_install_excepthooks` replaced, unless replaced since."""
    global _previous_hooks
    if _previous_hooks is not None:
        if sys.excepthook is _uncaught:
            sys.excepthook = _previous_hooks[0]
        if threading.excepthook is _uncaught_in_thread:
            threading.excepthook = _previous_hooks[1]
        _previous_hooks = None


def _uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook``: the error line, then the previous hook; Ctrl-C stays Python's."""
    if not issubclass(kind, KeyboardInterrupt):
        emit_own(logging.ERROR, "uncaught_exception", {}, (kind, error, tb))
    (_previous_hooks or (sys.__excepthook__,))[0](kind, error, tb)


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: as :func:`_uncaught`, with the thread's name.

    ``SystemExit`` ends a thread quietly (as Python's own hook leaves it).
    """
    if not issubclass(args.exc_type, SystemExit | KeyboardInterrupt):
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        thread = args.thread.name if args.thread is not None else None
        emit_own(logging.ERROR, "uncaught_exception", {"thread.name": thread}, exc_info)
    previous = _previous_hooks[1] if _previous_hooks is not None else threading.__excepthook__
    previous(args)


def installed_chain() -> Chain | None:
    """The chain :func:`configure_logging` last installed (None after :func:`reset_logging`)."""
    return _installed


def reset_logging() -> None:
    """Undo :func:`configure_logging` (for tests): structlog defaults, no bridge on root."""
    global _installed, _bridge
    _installed = _bridge = None
    _restore_excepthooks()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, BRIDGE_MARK, False):
            root.removeHandler(handler)
    for name in _SERVER_ACCESS_LOGGERS:
        logging.getLogger(name).disabled = False
        logging.getLogger(name).propagate = True


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; safe to call at import time, before :func:`kiki_otel.configure`."""
    # The name goes to the logger factory (like stdlib's), and ``add_logger_name`` reads it.
    args = () if name is None else (name,)
    return cast(FilteringBoundLogger, structlog.get_logger(*args))


class OwnLogger:
    """kiki-otel's own log lines (reports, warnings), which must never raise.

    They go through the configured chain like any line, and that chain may hold a user's
    processor that raises. The caller is a shutdown flush, a middleware's ``finally``, a
    health probe: raising there would lose telemetry or replace the app's response. A line
    the chain fails on goes to the interpreter's stderr instead, as JSON, with the error.
    (A user's ``CallsiteParameterAdder`` names this wrapper as the call site; the
    ``logger`` field still names the kiki module.)
    """

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger = get_logger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log("exception", event, fields)

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        handled = sys.exc_info()[1] if method == "exception" else None
        try:
            getattr(self._logger, method)(event, **fields)
        except Exception as error:
            line = {**fields, "event": event, "logger": self._name, "level": method}
            line["logging_failed"] = safe_repr(error)[:200]
            if method == "exception":
                line["level"] = "error"
                line["exception"] = safe_repr(handled)[:200]
            with contextlib.suppress(AttributeError, OSError, ValueError):  # no stderr either
                sys.__stderr__.write(json_dumps(line).decode() + "\n")  # type: ignore[union-attr]
