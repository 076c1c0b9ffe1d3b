"""HTTP server instrumentation as one outermost pure-ASGI middleware.

Per request it makes exactly one SERVER span (no per-message send/receive spans), records the
stable-semconv HTTP metrics, writes one access-log line inside the span, and answers the
request id (= trace id) in ``X-Request-ID`` and W3C ``traceresponse`` on *every* response:
it sits outside Starlette's ``ServerErrorMiddleware``, so unhandled-exception 500s get them
too. Pure ASGI (not ``BaseHTTPMiddleware``) so context variables flow into the app.
"""

from __future__ import annotations

import re
import time
import traceback
import weakref
from asyncio import AbstractEventLoop, CancelledError, current_task
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Iterable
from contextlib import suppress
from contextvars import Context, copy_context
from functools import cache
from operator import itemgetter, methodcaller
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import Span

from . import _context
from ._access_log import AccessLog, access_log
from ._asgi import ASGIApp, Message, Receive, Scope, Send, direct_call
from ._context import (
    CURRENT,
    IDS,
    IDS_BY_NAME,
    SPAN_CONTEXT_OF,
    SPAN_KEY,
    client_request_id,
    client_request_id_get,
    current_get,
    current_set,
    get_span_context,
    ids_of,
    mark_exception,
    remember_ids,
    span_context_of,
)
from ._fast_histogram import fast_histogram
from ._fast_span import NO_ATTRIBUTES, DirectSpans
from ._json import safe_repr
from ._logging import OwnLogger
from ._native import plain_fields, speedups
from ._probe import same_code
from ._providers import DURATION_BUCKETS
from ._ratelimit import RateLimitedLog
from ._settings import Settings

__all__ = ["ServerTelemetry"]


_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_SENSITIVE_QUERY = frozenset(
    {
        "sig",
        "signature",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "password",
        "secret",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
    }
)
_INTERNAL_ERROR = b"Internal Server Error"
_START_ATTRIBUTES_MAX = 11
"""The most attributes :meth:`ServerTelemetry._start_span` gives a span (a span limit below
it sends every span the SDK's way)."""
_LAST_MESSAGE = frozenset({"http.response.body", "http.response.pathsend"})
"""Message types that end a response unless ``more_body`` (pathsend never has more)."""
_NAME, _LOWER = itemgetter(0), methodcaller("lower")
"""A header's name, lowercased: looked for in C among the app's response headers."""
_FASTAPI_NATIVE_KEY = "fastapi.telemetry"
_TRACED_KEY = "kiki_otel.traced"
"""Set in the scope by the outermost kiki middleware: one kiki inside another (a mounted
sub-app configured too) passes the request through, so there is one span and one id."""


# The API's get_global_textmap, which the C begin calls per request: its global read from
# the module's dict instead, while it compiles to this (``_probe.same_code``: code, names
# and constants; no docstring here).
def _get_global_textmap_as_inlined() -> Any:
    return _HTTP_TEXT_FORMAT  # type: ignore[name-defined]  # noqa: F821


_TEXTMAP_GET = (
    propagate.get_global_textmap
    if same_code(propagate.get_global_textmap, _get_global_textmap_as_inlined)
    and "_HTTP_TEXT_FORMAT" in vars(propagate)
    else None
)


def _redact_query(query: str) -> str:
    """The query with sensitive values replaced.

    Keys are compared as the app decodes them: ``%74oken`` is ``token`` to the app.
    """
    parts = []
    for pair in query.split("&"):
        key, sep, _value = pair.partition("=")
        sensitive = sep and unquote_plus(key).strip().lower() in _SENSITIVE_QUERY
        parts.append(f"{key}=REDACTED" if sensitive else pair)
    return "&".join(parts)


_w3c_only: tuple[object, bool] = (None, False)
"""The last global propagator seen by :func:`_propagator`, and whether it is W3C-only."""
_W3C_HEADERS = {
    raw: raw.decode("latin-1")
    for raw in (b"traceparent", b"tracestate", b"baggage", b"host", b"user-agent")
}
"""The request headers a span needs when the propagators are W3C-only; a browser sends ~15."""


def _propagator() -> tuple[Any, bool]:
    """The global propagator, and whether it is the default W3C pair (or one of them)."""
    global _w3c_only
    propagator = propagate.get_global_textmap()
    known, w3c_only = _w3c_only
    if known is not propagator:
        w3c_only = _is_w3c_only(propagator)
        _w3c_only = (propagator, w3c_only)
    return propagator, w3c_only


def _extract(carrier: dict[str, str], propagator: Any, w3c_only: bool) -> otel_context.Context:
    """``propagator.extract(carrier)``, skipped when it is known to find nothing.

    With the default propagators (W3C trace context and baggage) a request without
    ``traceparent`` and ``baggage`` headers extracts to an empty context: most requests
    to an edge service, and not worth the ~2 us of two propagators' lookups.
    """
    if w3c_only and "traceparent" not in carrier and "baggage" not in carrier:
        return otel_context.Context()
    return propagator.extract(carrier)  # type: ignore[no-any-return]


def _is_w3c_only(propagator: object) -> bool:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    w3c = (TraceContextTextMapPropagator, W3CBaggagePropagator)
    if type(propagator) is CompositePropagator:
        inner = getattr(propagator, "_propagators", None)
        return isinstance(inner, list | tuple) and all(type(p) in w3c for p in inner)
    return type(propagator) in w3c


def _route_of(scope: Scope) -> str | None:
    """The matched route template (``/items/{i}``), which Starlette leaves in the scope.

    Per request, so the common case is a few lookups: a request that passed no ``Mount``
    (only a Mount sets ``app_root_path``; uvicorn's ``--root-path`` sets ``root_path``). No
    route (a 404) returns before ``getattr(None, ...)``, which costs an exception. Below a
    mount the route is relative to it: :func:`_mounted_route_of` adds the mounts' templates.
    """
    if "app_root_path" in scope:
        return _mounted_route_of(scope)
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path", None)
    return None if path is None else str(path)


def _mounted_route_of(scope: Scope) -> str | None:
    """The route below mounts: their templates (``/tenants/{tenant}``), then the route's.

    Starlette keeps only the concrete prefix (``root_path`` ``/tenants/acme`` after the
    server's ``app_root_path``), and an id in ``http.route`` makes a metric series per
    tenant: :func:`_mounts_template` finds the templates, remembered per prefix. A Mount
    left as the route (a Starlette ``Router`` records one, to ``StaticFiles``) is its
    template (``/static``). No route stays None: the C end returns None for it without
    asking, and both ends must agree (so FastAPI's router, which records no Mount, leaves a
    mounted ``StaticFiles`` none). Mounts not found (in an included ``APIRouter``, below a
    ``Host``) keep the concrete prefix only if all path parameters are the route's.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return None
    mounted_app = isinstance(route, _mount_type())  # its path is the mounts' last template
    leaf = "" if mounted_app else str(path)
    router = scope.get("router")
    root_path: str = scope.get("root_path", "")
    app_root_path: str = scope["app_root_path"]
    key = (id(router), app_root_path, root_path)
    known = _mount_templates.get(key)
    if known is not None and known[0]() is router:
        template = known[1]
    elif router is None:
        template = None
    else:
        template = _mounts_template(router, scope, app_root_path, root_path)
        if len(_mount_templates) >= _MOUNT_TEMPLATES_MAX:
            _mount_templates.clear()
        _mount_templates[key] = (weakref.ref(router), template)
    if template is not None:
        return template + leaf
    own = () if mounted_app else getattr(route, "param_convertors", ())
    if root_path.startswith(app_root_path) and all(
        name in own for name in scope.get("path_params", ())
    ):
        return root_path[len(app_root_path) :] + leaf
    return None


def _mounts_template(router: Any, scope: Scope, app_root_path: str, root_path: str) -> str | None:
    """The templates of the mounts that took ``root_path`` from ``app_root_path``, or None.

    The outermost router's mounts are matched again as it routed (the first that matches
    is the one it took: a route before it did not), then the chosen mount's, until the
    prefix is ``root_path``: ~10 us a level here, so :func:`_mounted_route_of` keeps it.
    """
    mount_type = _mount_type()
    probe = {"type": scope["type"], "path": scope["path"], "root_path": app_root_path}
    routes: Iterable[Any] = getattr(router, "routes", ())
    template = ""
    while probe["root_path"] != root_path:
        for mount in routes:
            if isinstance(mount, mount_type):
                below = mount.matches(probe)[1].get("root_path")
                if below is not None:
                    break
        else:
            return None
        if not root_path.startswith(below):
            return None
        template += mount.path
        probe["root_path"] = below
        routes = mount.routes
    return template


@cache
def _mount_type() -> Any:
    """Starlette's ``Mount``, imported once (Starlette is optional; an import costs ~2 us).

    On the first mounted request: only a Starlette ``Mount`` sets ``app_root_path``.
    """
    from starlette.routing import Mount

    return Mount


_mount_templates: dict[tuple[int, str, str], tuple[weakref.ref[Any], str | None]] = {}
"""(id of the outermost router, ``app_root_path``, ``root_path``) -> (a weak reference to
that router, what :func:`_mounts_template` found): a prefix's mounts are matched once, not
per request. The reference tells a router from a later one given a dead one's id."""
_MOUNT_TEMPLATES_MAX = 256
"""Past this many prefixes (a value per tenant, a scan) the memo starts over."""


_hosts: dict[str, tuple[str, int | None]] = {}
"""``Host`` header -> (``server.address``, ``server.port``): a service sees a few hosts."""
_HOSTS_MAX = 64
"""Past this many hosts (a scan, a client sending random ones) the cache starts over."""


def _parse_host(host: str) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` of a ``Host`` header value, remembered.

    The port only if it is plain ASCII digits up to 65535 (not "²", not 1e20); an IPv6
    literal keeps its brackets (``[::1]:8000`` -> ``[::1]``, 8000).
    """
    address, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
    parsed = (
        address or host,
        int(port) if port.isascii() and port.isdigit() and int(port) <= 65535 else None,
    )
    if len(_hosts) >= _HOSTS_MAX:
        _hosts.clear()
    _hosts[host] = parsed
    return parsed


_Current = tuple[otel_context.Context, int, int, int, SpanContext, tuple[str, str]]
"""The request's context, and its span's trace id, span id, trace flags, span context and
hex ids (what the histogram's exemplar filter and the access line read, see ``_finish``)."""


_detach: Any = CURRENT.reset if CURRENT is not None else otel_context.detach
"""``otel_context.detach`` of a token ``CURRENT.set`` gave, without its two Python calls
(which reset the same variable, in a ``try`` that logs a failure: the callers fall back to
it for that)."""


def _scan_headers_py(
    headers: Iterable[tuple[bytes, bytes]], id_header: bytes, wanted: dict[bytes, str] | None
) -> tuple[dict[str, str], int, list[bytes] | None]:
    """The propagators' carrier, the count of ``traceparent`` headers, the client's ids.

    The carrier holds the ``wanted`` headers by name (all of them if ``wanted`` is None), a
    repeated one joined with ","; ``wanted`` maps their raw names to their names as ``str``,
    made once. The ids: the ``id_header`` values, or None.
    """
    carrier: dict[str, str] = {}
    traceparents = 0
    client_ids: list[bytes] | None = None
    for raw_name, raw_value in headers:
        if raw_name == id_header:
            client_ids = client_ids if client_ids is not None else []
            client_ids.append(raw_value)
            continue
        if wanted is None:
            name = raw_name.decode("latin-1")
        elif (found := wanted.get(raw_name)) is not None:
            name = found
        else:
            continue
        if raw_name == b"traceparent":
            traceparents += 1
        value = raw_value.decode("latin-1")
        carrier[name] = f"{carrier[name]},{value}" if name in carrier else value
    return carrier, traceparents, client_ids


_scan_headers: Any = getattr(speedups, "scan_headers", None) or _scan_headers_py
"""``_scan_headers_py`` in C for a list or tuple of bytes pairs (None: the Python loop's)."""


def _request_ids_py(
    trace_id: int, span_id: int, flags: int, which: tuple[bytes, bool, bool]
) -> tuple[tuple[str, str], list[tuple[bytes, bytes]]]:
    """The request span's ids in lowercase hex, and the response headers that carry them.

    ``which``: the request id header's name (its value: the trace id), and whether W3C
    ``traceresponse`` and ``Server-Timing`` (both ``00-{trace}-{span}-{flags}``) are sent.
    ``_speedups.request_ids`` in Python; the ids must be in range (a valid span's).
    """
    id_header, traceresponse, server_timing = which
    # format(x, "032x") without the format-spec parser (see _context.remember_hex_ids)
    ids = (trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex())
    headers = [(id_header, ids[0].encode())]
    if traceresponse or server_timing:
        value = f"00-{ids[0]}-{ids[1]}-{flags & 0xFF:02x}"  # sampled, Level 2's random bit
        if traceresponse:
            headers.append((b"traceresponse", value.encode()))
        if server_timing:
            headers.append((b"server-timing", f'traceparent;desc="{value}"'.encode()))
    return ids, headers


_request_ids: Any = getattr(speedups, "request_ids", None) or _request_ids_py
"""``_request_ids_py`` in C (None for ids out of range: the Python twin raises for them)."""


class _SendWrapper:
    """The ``send`` a request's app gets, and the request's state for the middleware's end.

    It adds the request's id ``headers`` to the response start (the app's own id header
    dropped: ours wins) and sends the response's last message in the ``outer`` context
    (see :func:`_send`). ``status``: the response's, 0 before it starts. ``sent`` /
    ``sent_ns`` (perf counter, epoch ns): when the last response message was handed to
    the server, 0 until then. The request ends there: FastAPI's background tasks run after
    it, within the same ASGI call, but the client already has its response.
    ``_speedups.send_wrapper`` makes the same object in C, whose messages go to the server
    without a coroutine of ours (the last one through an awaitable that sets the API's
    context variable around each step); for messages of another shape it calls
    :func:`_send` too.
    """

    __slots__ = ("headers", "id_header", "outer", "send", "sent", "sent_ns", "started", "status")

    def __init__(
        self,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        id_header: bytes,
        outer: otel_context.Context,
        slow: object = None,  # (the C one's: what it calls for the rest, _send)
        var: object = None,  # (the C one's: the context variable it sets to outer)
    ) -> None:
        self.send, self.headers, self.id_header, self.outer = send, headers, id_header, outer
        self.status = 0
        self.started = False
        self.sent = 0.0
        self.sent_ns = 0

    def __call__(self, message: Message) -> Awaitable[None]:
        return _send(self, message)


async def _send(wrapper: _SendWrapper, message: Message) -> Any:
    """``wrapper(message)``: the message, with the request's ids if it starts the response.

    Returns what the server's send returns (None, from an ASGI server), as the C one does.
    """
    send: Any = wrapper.send
    if message["type"] == "http.response.start":
        wrapper.status = message["status"]
        wrapper.started = True
        headers = [*message.get("headers", ())]
        # the app's own id header goes (ours wins), and its traceresponse when we send one
        # (a response has one); Server-Timing entries add up
        ours = {wrapper.id_header} | {n for n, _ in wrapper.headers if n == b"traceresponse"}
        if not ours.isdisjoint(map(_LOWER, map(_NAME, headers))):
            headers = [h for h in headers if h[0].lower() not in ours]
        headers.extend(wrapper.headers)
        message["headers"] = headers
    elif message["type"] in _LAST_MESSAGE and not message.get("more_body"):
        # The server's end-of-response work runs outside the request's trace: it arms its
        # keep-alive timer there, and asyncio's call_later keeps a copy of the current
        # context, span included, in the timer heap until the timer fires or the heap is
        # compacted (cancelled timers stay: ~100 of them). Spans held that long get
        # promoted, and promotions trigger full GCs.
        outer = wrapper.outer
        outer_token = current_set(outer) if CURRENT is not None else otel_context.attach(outer)
        try:
            result = await send(message)
            wrapper.sent, wrapper.sent_ns = time.perf_counter(), time.time_ns()
        finally:
            try:
                _detach(outer_token)
            except Exception:  # the API's detach logs why
                otel_context.detach(outer_token)
        return result
    return await send(message)


_new_send_wrapper: Any = getattr(speedups, "send_wrapper", None) or _SendWrapper
"""``_SendWrapper(send, headers, id_header, outer, _send, CURRENT)``, in C when it is built."""

_Begun = tuple[
    _SendWrapper, Span, SpanContext, _Current, Any, Any, dict[str, Any], list[Any], float
]
"""A request's start (:meth:`ServerTelemetry._begin`): the app's send (with the request's
state), the span, its span context, the request's ``_Current``, the token that detaches its
context, the client request id's token (None: not set), the active-request count's
attributes and entry, and the start time (perf counter)."""


class ServerTelemetry:
    """The outermost middleware: server span, request id headers, HTTP metrics, access log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
    ) -> None:
        self.app = app
        self._app = direct_call(app)
        self._excluded = settings.excluded_paths()
        self._tracer = tracer_provider.get_tracer("kiki_otel.http.server")
        meter = meter_provider.get_meter("kiki_otel.http.server")
        duration_histogram = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            # Advisory too, so seconds buckets hold even in a provider we joined (no views).
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        # the fast record (C's, or FastHistogram.record) when the histogram is the SDK's,
        # else the histogram itself
        fast = fast_histogram(duration_histogram)
        self._fast_duration = fast.call if fast is not None else None
        self._duration = duration_histogram
        self._active = _active_requests(meter_provider, meter)
        self._direct = DirectSpans.for_tracer(self._tracer)
        http = settings.http
        self._id_header = http.request_id_header.lower().encode("latin-1")
        # the response headers that carry the ids: the id header's name, then whether
        # traceresponse and Server-Timing are on
        self._id_headers = (self._id_header, http.traceresponse, http.server_timing)
        self._accept_client_id = http.accept_client_request_id
        self._client_id_max = http.client_request_id_max_length
        # (its call: the C one, or a bound __call__, not the object's generic call path)
        self._access_log: AccessLog | None = access_log().call if http.access_log else None
        self._warn = RateLimitedLog(OwnLogger("kiki_otel.http"), interval=10.0)
        native_end = getattr(speedups, "request_end", None)
        # _finish's common case in C (its twin, and what it calls for the rest), when built
        self._finish_request: Any = (
            native_end(
                self._finish,
                self._fast_duration,
                self._direct.close if self._direct is not None else None,
                self._access_log,
                NonRecordingSpan,
                NO_ATTRIBUTES,
                _route_of,
            )
            if native_end is not None and self._fast_duration is not None
            else self._finish
        )
        native_begin = getattr(speedups, "request_begin", None)
        direct = self._direct
        # _begin's common case in C (its twin, and what it calls for the rest), when built
        self._begin_request: Any = (
            native_begin(
                self._begin,
                globals(),  # (it reads _w3c_only, the last propagator seen)
                propagate,
                _W3C_HEADERS,
                self._id_header,
                _KNOWN_METHODS,
                self._client_id,
                otel_context.Context,
                direct.usable,
                _START_ATTRIBUTES_MAX,
                direct.open,
                self._recorded,
                self._span_ids,
                NonRecordingSpan,
                SPAN_CONTEXT_OF,
                SpanContext if SpanContext in IDS else None,  # (read by position)
                self._id_headers,
                remember_ids,
                SPAN_KEY,
                CURRENT,
                client_request_id,
                self._active.counts,
                self._active.add,
                _new_send_wrapper,
                _send,
                _hosts,
                _parse_host,
                _redact_query,
                _TEXTMAP_GET,
                vars(_context),  # (remember_ids sets its _last_hex; C sets it so)
            )
            if native_begin is not None
            and direct is not None
            and CURRENT is not None
            and SPAN_KEY is not None
            else self._begin
        )
        self._batch_max = http.finish_batch
        self._batch: list[tuple[Context, tuple[Any, ...]]] | None = None
        self._batch_task: object = None  # the task that ended the quiet loop's request
        self._loop: AbstractEventLoop | None = None  # the loop the waiting requests ended on
        self._grown = False  # a request joined them in this turn of the loop
        native_close = getattr(speedups, "request_close", None)
        # _close's common case in C (its twin, and what it calls for the rest), when built
        self._close_request: Any = (
            native_close(
                self._close,
                self,
                globals(),  # (it reads _detach)
                _get_running_loop,
                current_task,
                self._finish_request,
                self._end,
                self._finish_each,
                self._failed,
                client_request_id,
                otel_context.detach,
                plain_fields(self, ("_batch", "_loop", "_batch_task", "_batch_max")),
            )
            if native_close is not None
            else self._close
        )
        native_traced = getattr(speedups, "request_traced", None)
        # what a traced request runs: _run's awaitable in C when built (no coroutine, no
        # frame), else its coroutine; the three fields it reads per request, held
        self._traced: ASGIApp = (
            native_traced(
                self._run,
                self,
                plain_fields(self, ("_begin_request", "_app", "_close_request")),
                self._raised,
            )
            if native_traced is not None
            else self._run
        )
        native_dispatch = getattr(speedups, "request_dispatch", None)
        # _dispatch in C when built: what the layer outside calls (_asgi.direct_call)
        self._native_dispatch: Any = (
            native_dispatch(
                self._dispatch,
                self._app,
                self._traced,
                self._excluded,
                self._below_root,
                _FASTAPI_NATIVE_KEY,
                _TRACED_KEY,
            )
            if native_dispatch is not None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._dispatch(scope, receive, send)

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The request's coroutine: :meth:`_traced`'s, or the app's for what is not traced.

        What the layer outside calls (``_asgi.direct_call``): no coroutine of its own, a
        coroutine object and a layer of ``await`` per request fewer.
        """
        # FastAPI's own nested-app guard: with this key present, no FastAPI below us (a
        # mounted sub-app, say) starts native telemetry, so there is one server span. (Not
        # setdefault: C code a request would run only for this.)
        if scope["type"] in ("http", "websocket") and _FASTAPI_NATIVE_KEY not in scope:
            scope[_FASTAPI_NATIVE_KEY] = None
        if scope["type"] != "http" or _TRACED_KEY in scope:
            return self._app(scope, receive, send)
        scope[_TRACED_KEY] = True
        if scope["path"] in self._excluded or (scope.get("root_path") and self._below_root(scope)):
            return self._app(scope, receive, send)
        return self._traced(scope, receive, send)

    def _below_root(self, scope: Scope) -> bool:
        """An excluded path below the root path, as the app sees it.

        Behind ``--root-path`` the server's ``path`` starts with the root path (uvicorn);
        the app's routes, and the excluded paths, do not.
        """
        path: str = scope["path"]
        root: str = scope["root_path"]
        return path.startswith(root) and path[len(root) :] in self._excluded

    def _read_headers(self, scope: Scope, w3c_only: bool) -> tuple[dict[str, str], str | None]:
        """Carrier for the propagators, with a duplicated traceparent dropped (new trace).

        Under W3C-only propagators only the headers they and the span read are decoded;
        another propagator (B3, Jaeger, a vendor's) gets them all.
        """
        headers, wanted = scope["headers"], _W3C_HEADERS if w3c_only else None
        scanned = _scan_headers(headers, self._id_header, wanted)  # None: not plain, for C
        if scanned is None:
            scanned = _scan_headers_py(headers, self._id_header, wanted)
        carrier, traceparents, client_ids = scanned
        if traceparents > 1:
            carrier.pop("traceparent", None)
            carrier.pop("tracestate", None)
            self._warn.warning("http.traceparent.duplicate", count=traceparents)
        return carrier, self._client_id(client_ids) if client_ids else None

    def _client_id(self, values: list[bytes]) -> str | None:
        if not values or not self._accept_client_id:
            return None
        raw = values[0].strip(b" \t")  # RFC 9110 5.5: surrounding whitespace is no part of it
        if (
            len(values) == 1
            and 0 < len(raw) <= self._client_id_max
            and _CLIENT_ID.fullmatch(raw.decode("latin-1"))
        ):
            return raw.decode("ascii")
        # Escaped and truncated: a hostile header must not forge log lines or flood them
        # (printable ASCII as it came, anything else as a \x.. escape).
        shown = b"".join(values[:2])[:64].decode("latin-1").encode("unicode_escape").decode()
        self._warn.warning(
            "http.client_request_id.rejected", value=shown, count=len(values), length=len(raw)
        )
        return None

    def _start_span(
        self,
        scope: Scope,
        method: str,
        carrier: dict[str, str],
        parent: otel_context.Context,
        client_id: str | None,
    ) -> tuple[Span, SpanContext, list[tuple[bytes, bytes]], _Current]:
        """The request span, its span context, the response headers and its context.

        The headers: those that carry the span's ids (see :func:`_request_ids_py`), whose
        hex ids are kept for the request's log lines (``remember_ids``). The context:
        ``set_span_in_context(span, parent)``, with the span's trace id, span id, trace
        flags, span context and hex ids (what the histogram's exemplar filter and the
        access line read, see ``_finish``).
        """
        name = "HTTP" if method == "_OTHER" else method
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        span: Span | None = None
        if self._direct is not None and self._direct.usable(_START_ATTRIBUTES_MAX):
            span = self._direct.open(name, parent, attributes)  # the same span, cheaper
        if span is None or type(span) is not NonRecordingSpan:  # (a dropped one keeps none)
            span = self._recorded(scope, method, name, carrier, parent, client_id, attributes, span)
        span, span_context, trace_id, span_id, flags, hex_ids, headers = self._span_ids(span)
        remember_ids(span_context, hex_ids)
        if SPAN_KEY is None:
            ctx = trace.set_span_in_context(span, parent)
        else:  # trace.set_span_in_context(span, parent), without its two calls
            values = (parent if parent is not None else otel_context.get_current()).copy()
            values[SPAN_KEY] = span
            ctx = otel_context.Context(values)
        return span, span_context, headers, (ctx, trace_id, span_id, flags, span_context, hex_ids)

    def _recorded(
        self,
        scope: Scope,
        method: str,
        name: str,
        carrier: dict[str, str],
        parent: otel_context.Context,
        client_id: str | None,
        attributes: dict[str, Any],
        span: Span | None,
    ) -> Span:
        """The attributes only a recording span keeps, added to its ``attributes``.

        ``span``: the direct path's span (its attribute dict is ``attributes``), or None:
        then the span starts here the SDK's way, with all of them. (The C start adds them
        to a direct span's dict itself: ``begin_recorded`` in ``_speedups.c``.)
        """
        if method == "_OTHER":
            attributes["http.request.method_original"] = scope.get("method", "")
        query = scope.get("query_string", b"")
        if query:
            attributes["url.query"] = _redact_query(query.decode("latin-1"))
        host = carrier.get("host")
        if host:
            address, port = _hosts.get(host) or _parse_host(host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        agent = carrier.get("user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        if client_id is not None:
            attributes["http.request.header.x-request-id"] = (client_id,)
        if span is None:
            span = self._tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
        return span

    def _span_ids(
        self, span: Span
    ) -> tuple[Span, SpanContext, int, int, int, tuple[str, str], list[tuple[bytes, bytes]]]:
        """The span (replaced if it is invalid), its context, ids, flags, hex ids, headers.

        The headers: those that carry the ids (see :func:`_request_ids_py`).
        """
        span_context = span_context_of(type(span), get_span_context)(span)
        trace_id, span_id, flags, valid = ids_of(type(span_context), IDS_BY_NAME)(span_context)
        if not valid:
            # No SDK (OTEL_SDK_DISABLED): still give the request an id, W3C-shaped.
            span_context = _random_span_context()
            span = NonRecordingSpan(span_context)
            trace_id, span_id, flags, valid = IDS_BY_NAME(span_context)
        which = self._id_headers
        made = _request_ids(trace_id, span_id, flags, which)  # None: for the Python twin
        hex_ids, headers = made or _request_ids_py(trace_id, span_id, flags, which)
        return span, span_context, trace_id, span_id, flags, hex_ids, headers

    def _begin(self, scope: Scope, send: Send) -> _Begun:
        """The request's start, up to the app's call (see :data:`_Begun`).

        ``_speedups.request_begin`` runs its common case in C (this is its twin).
        """
        start = time.perf_counter()
        propagator, w3c_only = _propagator()
        carrier, client_id = self._read_headers(scope, w3c_only)
        method = scope.get("method", "GET")
        method = method if method in _KNOWN_METHODS else "_OTHER"
        parent = _extract(carrier, propagator, w3c_only)
        span, span_context, extra_headers, current = self._start_span(
            scope, method, carrier, parent, client_id
        )
        ctx = current[0]
        if CURRENT is not None:  # otel_context.get_current() and attach(ctx), without calls
            outer = current_get()
            token = current_set(ctx)
        else:
            outer = otel_context.get_current()
            token = otel_context.attach(ctx)
        # set only to change it: None, the default, in nearly every request (a context var's
        # set and reset cost ~100 L1 misses a request: cold code bare never runs)
        client_token = (
            client_request_id.set(client_id)
            if client_id is not None or client_request_id_get() is not None
            else None
        )
        active_attrs = {"http.request.method": method, "url.scheme": scope.get("scheme", "http")}
        active_key = self._active.add(active_attrs)
        # the app's send, which keeps the request's state (status, when the response was sent)
        state: _SendWrapper = _new_send_wrapper(
            send, extra_headers, self._id_header, outer, _send, CURRENT
        )
        return (
            state,
            span,
            span_context,
            current,
            token,
            client_token,
            active_attrs,
            active_key,
            start,
        )

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A traced request: begun, the app run with our send, closed, whatever happens.

        ``_speedups.request_traced`` runs it as an awaitable of its own (this is its
        twin): both hand an error to :meth:`_raised`.
        """
        begun = self._begin_request(scope, send)
        try:
            await self._app(scope, receive, begun[0])
        except BaseException as error:
            await self._raised(scope, begun, error)
        state, span, _, current, token, client_token, active_attrs, active_key, start = begun
        self._close_request(
            scope,
            span,
            current,
            state,
            None,
            start,
            active_attrs,
            active_key,
            client_token,
            token,
        )

    async def _raised(self, scope: Scope, begun: tuple[Any, ...], error: BaseException) -> NoReturn:
        """A traced request the app failed: 500 if nothing was sent, closed, raised on.

        Raised first, and answered from its ``except`` block, as a failure while answering
        is chained to it there; ``finally``: the request is closed even then.
        """
        state, span, span_context, current, token, client_token, active_attrs, active_key, start = (
            begun
        )
        try:
            raise error
        except BaseException:
            try:
                mark_exception(error, span_context)  # for the server's line about it, later
                if not state.started and isinstance(error, Exception):
                    await self._send_500(state)
                elif not state.started and isinstance(error, CancelledError):
                    # The server cancelled it (uvicorn at --timeout-graceful-shutdown) and
                    # answers 500 itself, without the id: the answer is ours, the
                    # cancellation goes on whether or not it can still be sent.
                    with suppress(Exception):
                        await self._send_500(state)
            finally:
                self._close_request(
                    scope,
                    span,
                    current,
                    state,
                    error,
                    start,
                    active_attrs,
                    active_key,
                    client_token,
                    token,
                )
            raise

    def _close(
        self,
        scope: Scope,
        span: Span,
        current: _Current,
        state: _SendWrapper,
        error: BaseException | None,
        start: float,
        active_attrs: dict[str, Any],
        active_key: list[Any],
        client_token: Any,
        token: Any,
    ) -> None:
        """The request's end, once the app is done.

        Counted out, its telemetry finished (now, or with other requests': :meth:`_end`),
        its context variables reset. A failure of the telemetry is reported, not raised.
        ``_speedups.request_close`` runs its common case in C (this is its twin).
        """
        try:
            active_key[0] -= 1  # (_ActiveRequests.add's entry: [count, attributes])
            if self._batch_max > 1:
                self._end(scope, span, current, state, error, start, active_attrs)
            else:
                self._finish_request(scope, span, current, state, error, start, active_attrs)
        except Exception as failure:  # never replace the app's outcome, never leak ids
            self._failed(failure)
        finally:
            if client_token is not None:
                client_request_id.reset(client_token)
            try:
                _detach(token)
            except Exception:  # the API's detach logs why
                otel_context.detach(token)

    def _end(
        self,
        scope: Scope,
        span: Span,
        current: _Current,
        state: _SendWrapper,
        error: BaseException | None,
        start: float,
        active_attrs: dict[str, Any],
    ) -> None:
        """Finish the request's telemetry now, or with other requests' in a moment.

        The span's end, the metric, the access line and its record run cold at the end of
        a request on a busy server: between two requests the server's own work (parsing,
        the event loop, other connections) has taken the CPU caches. Run for several
        requests in a row, the first warms them for the rest (docs/performance-log.md,
        eleventh and sixteenth rounds). So a request that ends while the loop is quiet is
        finished at once, and so is each later one ended by the same task (a test's
        client); requests that other tasks end meanwhile (a server runs each request in a
        task of its own) wait, each with its context (ids, bound variables) and its end
        times, and are finished together, in the order they ended: when ``finish_batch``
        of them wait (at that request's end, where its own work would have run), or once
        a turn of the event loop has ended no request (at the start of the next).
        """
        if not state.sent:  # its duration and end time are now, whenever it is finished
            state.sent, state.sent_ns = time.perf_counter(), time.time_ns()
        loop = _get_running_loop()
        batch = self._batch
        if batch is not None and loop is self._loop:
            if current_task(loop) is not self._batch_task:
                item = (scope, span, current, state, error, start, active_attrs)
                batch.append((copy_context(), item))
                self._grown = True
                if len(batch) >= self._batch_max:
                    self._batch = []
                    self._finish_each(batch)
                return
        elif batch is not None:  # they ended on a loop that is gone (a test's, say)
            self.finish_pending()
        if loop is not None and self._batch is None:  # (None: not asyncio's loop, no batches)
            self._batch, self._loop, self._grown = [], loop, False
            self._batch_task = current_task(loop)
            # in an empty context: the handle must not keep this request's span alive
            loop.call_soon(self._turn_ended, loop, context=Context())
        self._finish_request(scope, span, current, state, error, start, active_attrs)

    def _turn_ended(self, loop: AbstractEventLoop) -> None:
        """Finish the waiting requests if the last turn of the loop ended none.

        Runs at the start of each turn while requests wait.
        """
        if self._grown and self._batch is not None:
            self._grown = False
            loop.call_soon(self._turn_ended, loop, context=Context())
        else:
            self.finish_pending()

    def finish_pending(self) -> None:
        """Finish the requests that wait now (the shutdown's flush calls it first)."""
        batch, self._batch = self._batch, None
        self._batch_task = self._loop = None
        if batch:
            self._finish_each(batch)

    def _finish_each(self, batch: list[tuple[Context, tuple[Any, ...]]]) -> None:
        for context, item in batch:
            try:
                context.run(self._finish_request, *item)
            except Exception as failure:  # one request's failure must not cost the others'
                self._failed(failure)

    def _failed(self, failure: Exception) -> None:
        # (never raises: kiki's own lines survive a chain that fails them)
        self._warn.warning("http.telemetry.failed", error=safe_repr(failure)[:200])

    @staticmethod
    async def _send_500(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_INTERNAL_ERROR)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _INTERNAL_ERROR})

    def _finish(
        self,
        scope: Scope,
        span: Span,
        current: _Current,
        state: _SendWrapper,
        error: BaseException | None,
        start: float,
        active_attrs: dict[str, Any],
    ) -> None:
        duration = (state.sent or time.perf_counter()) - start
        status = state.status or (500 if error is not None else 0)
        route = _route_of(scope)
        metric_attrs = dict(active_attrs)
        metric_attrs["network.protocol.version"] = scope.get("http_version", "1.1")
        if route is not None:
            metric_attrs["http.route"] = route
        if status:
            metric_attrs["http.response.status_code"] = status
        # An unsampled request's span (NonRecordingSpan: every method does nothing) is left
        # alone: at 10% sampling, nine requests in ten.
        live = type(span) is not NonRecordingSpan
        direct = self._direct
        span_attrs = NO_ATTRIBUTES
        name = None
        if live and (route is not None or status):
            span_attrs = {}
            if route is not None:
                span_attrs["http.route"] = route
                method = active_attrs["http.request.method"]
                name = f"{'HTTP' if method == '_OTHER' else method} {route}"
            if status:
                span_attrs["http.response.status_code"] = status
            if direct is not None and error is None and status < 500:
                pass  # they go in as the span ends (DirectSpans.finish), in one call
            elif direct is not None:  # before the error's attributes, as in the SDK's order
                direct.set_attributes(span, span_attrs, name)
                span_attrs, name = NO_ATTRIBUTES, None
            else:
                if name is not None:
                    span.update_name(name)
                span.set_attributes(span_attrs)
        if error is not None and isinstance(error, Exception):
            error_type = type(error).__qualname__
            metric_attrs["error.type"] = error_type
            if live:
                _record_exception(span, error)
                span.set_status(StatusCode.ERROR, error_type)
                span.set_attribute("error.type", error_type)
        elif status >= 500:
            metric_attrs["error.type"] = str(status)
            if live:
                span.set_attribute("error.type", str(status))
                span.set_status(StatusCode.ERROR)
        # The metric, the span and the access line each go out even when another one raises
        # (a user's span processor, a user's structlog processor); the first failure is
        # raised after all three, for the caller to report.
        failure: Exception | None = None
        try:
            if self._fast_duration is not None:  # the exemplar filter's answer from the ids
                self._fast_duration(duration, metric_attrs, current)
            else:
                self._duration.record(duration, metric_attrs)
        except Exception as exc:
            failure = exc
        try:
            if live and direct is not None:
                direct.close(span, span_attrs, name, state.sent_ns or None)
            elif live:
                span.end(state.sent_ns or None)
        except Exception as exc:
            failure = failure or exc
        if self._access_log is not None:
            try:
                # ms to the us: round(duration * 1e3, 3) but for half-us ties, without the
                # correctly rounded decimal conversion round(x, 3) runs (dtoa: ~2k
                # instructions); the line's C JSON writes such a value without it too
                millis = round(duration * 1e6) / 1e3
                method = scope.get("method")
                self._access_log(method, scope["path"], route, status, millis, current)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def _record_exception(span: Span, error: BaseException) -> None:
    """``span.record_exception(error)``, also for an exception whose ``str()`` raises.

    The SDK's own call would raise then, and cost the span, the access line and the metric.
    """
    try:
        str(error)
    except Exception:
        module, name = type(error).__module__, type(error).__qualname__
        span.add_event(
            "exception",
            {
                "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
                "exception.message": f"<unprintable {name}>",
                "exception.stacktrace": "".join(traceback.format_exception(error)),
                "exception.escaped": "False",
            },
        )
        return
    span.record_exception(error)


class _ActiveRequests:
    """``http.server.active_requests`` as an observable up-down counter over plain ints.

    Exports the same cumulative, non-monotonic sum per (method, scheme) as a synchronous
    UpDownCounter would, but a request costs two dict updates instead of two SDK
    measurements (~10 us each). One per meter provider, shared by every app it serves.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self.counts: dict[tuple[str, str], list[Any]] = {}
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[self._observe],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )

    def add(self, attributes: dict[str, Any]) -> list[Any]:
        """Count a request in: its entry in ``counts``, ``[count, attributes]``.

        The request's end counts it out (``entry[0] -= 1``). ``_speedups.request_begin``
        counts a known entry in itself.
        """
        key = (attributes["http.request.method"], attributes["url.scheme"])
        entry = self.counts.get(key)
        if entry is None:
            entry = self.counts.setdefault(key, [0, dict(attributes)])
        entry[0] += 1
        return entry

    def _observe(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(n, attrs) for n, attrs in list(self.counts.values())]


_ACTIVE: weakref.WeakKeyDictionary[Any, _ActiveRequests] = weakref.WeakKeyDictionary()


def _active_requests(provider: metrics.MeterProvider, meter: metrics.Meter) -> _ActiveRequests:
    try:
        active = _ACTIVE.get(provider)
        if active is None:
            active = _ACTIVE[provider] = _ActiveRequests(meter)
    except TypeError:  # a provider that cannot be weakly referenced: no sharing
        active = _ActiveRequests(meter)
    return active


def _random_span_context() -> SpanContext:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    ids = RandomIdGenerator()
    return SpanContext(
        ids.generate_trace_id(), ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(0)
    )
