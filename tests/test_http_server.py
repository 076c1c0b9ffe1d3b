"""Server instrumentation: one span per request, request id = trace id on every response,
strict handling of incoming traceparent / X-Request-ID, stable HTTP metrics, access log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, WebSocket
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, StatusCode

import kiki_otel
from tests.conftest import HeaderSink, Memory, layer_of, trace_memory

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def make_app() -> FastAPI:
    app = FastAPI()
    seen: dict[str, Any] = {}
    app.state.seen = seen

    class Teapot(Exception):
        pass

    @app.exception_handler(Teapot)
    async def teapot_handler(_request: Any, _exc: Teapot) -> JSONResponse:
        return JSONResponse({"teapot": True}, status_code=418)

    def dependency() -> str | None:
        seen["dependency"] = kiki_otel.get_request_id()
        return seen["dependency"]

    def in_background() -> None:
        seen["background"] = kiki_otel.get_request_id()

    @app.get("/items/{item_id}")
    async def item(
        item_id: int, background: BackgroundTasks, dep: str | None = Depends(dependency)
    ) -> dict[str, Any]:
        seen["endpoint"] = kiki_otel.get_request_id()
        seen["thread"] = await asyncio.to_thread(kiki_otel.get_request_id)
        background.add_task(in_background)
        kiki_otel.get_logger("test.app").info("item.loaded", item_id=item_id)
        return {"request_id": kiki_otel.get_request_id()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/teapot")
    async def teapot() -> None:
        raise Teapot

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise HTTPException(403)

    @app.get("/metrics")
    async def metrics_endpoint() -> str:
        return "excluded"

    return app


@pytest.fixture
def app(memory: Memory) -> FastAPI:
    app = make_app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def asgi_scope(path: str, **extra: Any) -> dict[str, Any]:
    """A GET scope for driving the app as an ASGI server would (what httpx cannot send)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    scope.update(extra)
    return scope


def server_spans(memory: Memory) -> list[Any]:
    return [s for s in memory.spans() if s.kind == SpanKind.SERVER]


def log_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_request_id_is_the_trace_id_everywhere(app: FastAPI, memory: Memory) -> None:
    """X-Request-ID == server span trace id == get_request_id() in endpoint, dependency,
    background task and to_thread."""
    async with client(app) as c:
        response = await c.get("/items/7")
    request_id = response.headers["x-request-id"]
    (span,) = server_spans(memory)
    assert request_id == format(span.context.trace_id, "032x")
    assert response.json()["request_id"] == request_id
    seen = app.state.seen
    assert (
        seen["endpoint"] == seen["dependency"] == seen["thread"] == seen["background"] == request_id
    )
    traceresponse = response.headers["traceresponse"]
    # the span's flags: sampled, and W3C Level 2's random trace id bit the SDK sets
    assert traceresponse == f"00-{request_id}-{span.context.span_id:016x}-03"
    assert span.context.trace_flags == 0x03


async def test_exactly_one_server_span_named_by_route(app: FastAPI, memory: Memory) -> None:
    """Native telemetry is off: one SERVER span, no per-operation or send/receive spans."""
    async with client(app) as c:
        await c.get("/items/1")
    spans = memory.spans()
    assert len(spans) == 1, [s.name for s in spans]
    span = spans[0]
    assert span.kind == SpanKind.SERVER
    assert span.name == "GET /items/{item_id}"
    attrs = dict(span.attributes or {})
    assert attrs["http.route"] == "/items/{item_id}"
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/items/1"
    assert attrs["url.scheme"] == "http"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/nope", 404),
        ("/items/not-an-int", 422),
        ("/boom", 500),
        ("/teapot", 418),
        ("/forbidden", 403),
    ],
)
async def test_every_response_carries_the_request_id(
    app: FastAPI, memory: Memory, path: str, status: int
) -> None:
    """404, 422, unhandled 500 and exception-handler responses all answer X-Request-ID."""
    async with client(app) as c:
        response = await c.get(path)
    assert response.status_code == status
    (span,) = server_spans(memory)
    assert response.headers["x-request-id"] == format(span.context.trace_id, "032x")


async def test_unhandled_exception_marks_span_error(app: FastAPI, memory: Memory) -> None:
    """A 500 from an exception sets span status ERROR, error.type and an exception event."""
    async with client(app) as c:
        await c.get("/boom")
    (span,) = server_spans(memory)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert any(event.name == "exception" for event in span.events)


async def test_valid_traceparent_continues_the_trace(app: FastAPI, memory: Memory) -> None:
    """A valid incoming traceparent: same trace id, our span is its child."""
    async with client(app) as c:
        response = await c.get("/items/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    (span,) = server_spans(memory)
    assert response.headers["x-request-id"] == TRACE
    assert format(span.parent.span_id, "016x") == PARENT


async def test_baggage_and_other_propagators_are_still_extracted(
    app: FastAPI, memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip of extraction for requests without W3C headers never skips what a
    propagator could find: baggage alone, or a non-W3C propagator's own header."""
    from opentelemetry import baggage, propagate
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.propagators.textmap import DefaultGetter, TextMapPropagator
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    seen: list[Any] = []

    @app.get("/baggage")
    async def read_baggage() -> None:
        seen.append(baggage.get_baggage("tenant"))

    async with client(app) as c:
        await c.get("/baggage", headers={"baggage": "tenant=acme"})
    assert seen == ["acme"]

    class VendorPropagator(TextMapPropagator):
        """Reads ``x-vendor-trace: <32 hex trace id>``: a stand-in for B3/Jaeger headers."""

        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            values = (getter or DefaultGetter()).get(carrier, "x-vendor-trace")
            parent = SpanContext(int(values[0], 16), 0x1, True, TraceFlags(1))
            return set_span_in_context(NonRecordingSpan(parent), context)

        def inject(self, *args: Any, **kwargs: Any) -> None:
            return None

        @property
        def fields(self) -> set[str]:
            return {"x-vendor-trace"}

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([VendorPropagator()]))
    async with client(app) as c:
        response = await c.get("/items/1", headers={"x-vendor-trace": TRACE})
    assert response.headers["x-request-id"] == TRACE
    assert [format(s.context.trace_id, "032x") for s in server_spans(memory)][-1] == TRACE


async def test_a_browser_request_keeps_what_the_span_needs(app: FastAPI, memory: Memory) -> None:
    """Under the default propagators only the W3C and span headers are read; with a
    browser's worth of other headers around them, traceparent, tracestate, baggage, host
    and user agent all still arrive."""
    from opentelemetry import baggage

    seen: list[Any] = []

    @app.get("/seen")
    async def read_baggage() -> None:
        seen.append(baggage.get_baggage("tenant"))

    browser = {
        "accept": "text/html,application/xhtml+xml",
        "accept-encoding": "gzip, deflate, br",
        "accept-language": "en-GB,en;q=0.9",
        "cache-control": "no-cache",
        "cookie": "session=abc",
        "sec-fetch-mode": "navigate",
        "sec-ch-ua-platform": '"Linux"',
        "traceparent": f"00-{TRACE}-{PARENT}-01",
        "tracestate": "vendor=opaque",
        "baggage": "tenant=acme",
        "user-agent": "Mozilla/5.0 test",
        "upgrade-insecure-requests": "1",
    }
    async with client(app) as c:
        response = await c.get("/seen", headers=browser)
    assert response.headers["x-request-id"] == TRACE and seen == ["acme"]
    (span,) = server_spans(memory)
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
    assert span.context.trace_state.get("vendor") == "opaque"
    assert span.attributes["user_agent.original"] == "Mozilla/5.0 test"
    assert span.attributes["server.address"] == "testserver"


async def test_unsampled_parent_still_gets_ids_in_logs(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """sampled=0: no span is exported, but the request id and log correlation still work."""
    async with client(app) as c:
        response = await c.get("/items/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert response.headers["x-request-id"] == TRACE
    assert server_spans(memory) == []
    lines = [l for l in log_lines(capsys.readouterr().out) if l["event"] == "item.loaded"]
    assert lines and lines[0]["trace_id"] == TRACE and lines[0]["request_id"] == TRACE


async def test_unsampled_requests_keep_their_metrics_and_lines(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unsampled request's span does nothing (kiki skips it), but its duration point
    still has route, status and error.type, and its access line is written, for an
    exception and for a 5xx alike."""
    from fastapi.responses import JSONResponse

    @app.get("/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({}, status_code=503)

    unsampled = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    async with client(app) as c:
        assert (await c.get("/items/1", headers=unsampled)).status_code == 200
        assert (await c.get("/boom", headers=unsampled)).status_code == 500
        assert (await c.get("/unavailable", headers=unsampled)).status_code == 503
    assert server_spans(memory) == []
    points = {
        p.attributes["http.route"]: p.attributes
        for p in memory.metric_points("http.server.request.duration")
    }
    assert points["/items/{item_id}"]["http.response.status_code"] == 200
    assert "error.type" not in points["/items/{item_id}"]
    assert points["/boom"]["error.type"] == "RuntimeError"
    assert points["/unavailable"]["error.type"] == "503"
    access = [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]
    assert [l["route"] for l in access] == ["/items/{item_id}", "/boom", "/unavailable"]
    assert all(l["request_id"] == TRACE for l in access)


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", "00-xyz-123-01")],
        [("traceparent", f"00-{'0' * 32}-{PARENT}-01")],
        [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{'1' * 32}-{PARENT}-01")],
    ],
    ids=["malformed", "zero-trace-id", "duplicate"],
)
async def test_bad_traceparent_starts_a_new_trace(
    app: FastAPI, memory: Memory, headers: list[tuple[str, str]]
) -> None:
    """Malformed, invalid or duplicated traceparent: a fresh trace, never the client's id."""
    async with client(app) as c:
        response = await c.get("/items/1", headers=headers)
    (span,) = server_spans(memory)
    assert span.parent is None
    assert response.headers["x-request-id"] not in (TRACE, "1" * 32, "0" * 32)
    assert response.headers["x-request-id"] == format(span.context.trace_id, "032x")


async def test_valid_client_request_id_is_recorded_not_used(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An allowlisted X-Request-ID goes on the span and logs as client_request_id only."""
    async with client(app) as c:
        response = await c.get("/items/1", headers={"X-Request-ID": "legacy-abc.123:x"})
    (span,) = server_spans(memory)
    assert response.headers["x-request-id"] == format(span.context.trace_id, "032x")
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]
    assert span.attributes["http.request.header.x-request-id"] == ("legacy-abc.123:x",)
    line = next(l for l in log_lines(capsys.readouterr().out) if l["event"] == "item.loaded")
    assert line["client_request_id"] == "legacy-abc.123:x"


async def test_a_client_request_id_loses_its_surrounding_whitespace(
    app: FastAPI, memory: Memory
) -> None:
    """uvicorn's default parser (httptools) keeps a header value's trailing spaces, h11
    strips them; RFC 9110 says surrounding whitespace is no part of the value: the id is
    taken without it under either (it was rejected under httptools)."""
    scope = asgi_scope("/items/1", headers=[(b"host", b"t"), (b"x-request-id", b" pad1 \t ")])
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    assert messages[0]["status"] == 200
    (span,) = server_spans(memory)
    assert span.attributes["http.request.header.x-request-id"] == ("pad1",)


@pytest.mark.usefixtures("close_path")
async def test_a_context_reset_that_fails_falls_back_to_the_apis_detach(
    app: FastAPI, memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's contexts are reset directly; if that raises, the API's detach runs
    (and logs what it cannot do): the request still answers and the caller's context is
    back after it."""
    from kiki_otel import _http_server

    calls: list[object] = []

    def failing(token: object) -> None:
        calls.append(token)
        raise ValueError("reset refused")

    monkeypatch.setattr(_http_server, "_detach", failing)
    # the Python send (the C one resets its variable itself: a step cannot change contexts)
    monkeypatch.setattr(_http_server, "_new_send_wrapper", _http_server._SendWrapper)
    before = otel_context.get_current()
    async with client(app) as c:
        response = await c.get("/items/1")
    assert response.status_code == 200 and len(calls) == 2  # the response's and the request's
    assert otel_context.get_current() is before
    (span,) = server_spans(memory)
    assert response.headers["x-request-id"] == format(span.context.trace_id, "032x")


@pytest.mark.usefixtures("close_path")
async def test_the_client_request_id_is_the_requests_own_and_restored_after(
    memory: Memory,
) -> None:
    """Inside a request the client's id is its own header's, or None without one, even
    when the caller's context had one (a request served inside another's context); after
    the request the caller's value is back."""
    from kiki_otel._context import client_request_id

    app = FastAPI()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    seen: list[str | None] = []

    @app.get("/seen")
    async def seen_endpoint() -> None:
        seen.append(client_request_id.get())

    async with client(app) as c:
        for outer in (None, "outer-1"):
            token = client_request_id.set(outer)
            try:
                await c.get("/seen")
                await c.get("/seen", headers={"X-Request-ID": "mine-1"})
                assert client_request_id.get() == outer
            finally:
                client_request_id.reset(token)
    assert seen == [None, "mine-1", None, "mine-1"]


@pytest.mark.parametrize(
    "value",
    [
        b"abc\r\nx-evil: 1",
        b"abc\x00def",
        b"\x1b[31mred\x1b[0m",
        b"a" * 1_000_000,
        b"has space",
        b"",
    ],
    ids=["crlf", "nul", "ansi", "1mb", "space", "empty"],
)
async def test_hostile_client_request_id_is_dropped_and_escaped(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str], value: bytes
) -> None:
    """A client id outside the allowlist is dropped; the warning shows it escaped and short."""
    raw_app = app

    async def send_raw() -> tuple[int, dict[bytes, bytes]]:
        # httpx refuses to send CRLF/NUL; talk ASGI directly as a hostile proxy could.
        messages: list[dict[str, Any]] = []
        scope = asgi_scope("/items/1", headers=[(b"host", b"t"), (b"x-request-id", value)])

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await raw_app(scope, receive, send)
        start = messages[0]
        return start["status"], dict(start["headers"])

    status, headers = await send_raw()
    assert status == 200
    (span,) = server_spans(memory)
    assert "http.request.header.x-request-id" not in (span.attributes or {})
    assert headers[b"x-request-id"] == format(span.context.trace_id, "032x").encode()
    out = capsys.readouterr().out
    warnings = [l for l in log_lines(out) if l["event"] == "http.client_request_id.rejected"]
    assert len(warnings) == 1
    assert len(warnings[0]["value"]) < 100
    assert "\r" not in out and "\x00" not in out and "\x1b" not in out
    assert not any(l.get("client_request_id") for l in log_lines(out))


async def test_rejection_warnings_are_rate_limited(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flood of bad ids logs one warning per interval, not one per request."""
    async with client(app) as c:
        for _ in range(20):
            await c.get("/items/1", headers={"X-Request-ID": "bad id with spaces"})
    warnings = [
        l
        for l in log_lines(capsys.readouterr().out)
        if l["event"] == "http.client_request_id.rejected"
    ]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("header", "shown"),
    [("abc 123", "abc 123"), ("a\x7fb\xe9", "a\\x7fb\\xe9"), ("x" * 69 + " y", "x" * 64)],
)
async def test_a_rejected_client_id_is_shown_as_text(
    app: FastAPI,
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    header: str,
    shown: str,
) -> None:
    """The warning shows the rejected id as it came where it is printable ASCII, anything
    else escaped, cut to 64 bytes (it was a bytes repr: "b'abc 123'")."""
    async with client(app) as c:
        await c.get("/items/1", headers=[("X-Request-ID", header.encode("latin-1"))])
    (warning,) = [
        line
        for line in log_lines(capsys.readouterr().out)
        if line["event"] == "http.client_request_id.rejected"
    ]
    assert warning["value"] == shown


async def test_duplicate_client_request_ids_are_rejected(app: FastAPI, memory: Memory) -> None:
    """Two X-Request-ID headers are ambiguous: neither is recorded."""
    async with client(app) as c:
        await c.get("/items/1", headers=[("X-Request-ID", "a1"), ("X-Request-ID", "b2")])
    (span,) = server_spans(memory)
    assert "http.request.header.x-request-id" not in (span.attributes or {})


async def test_excluded_paths_produce_no_telemetry(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """/metrics (and the health paths) make no span, metric point or access-log line."""
    async with client(app) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert memory.spans() == []
    assert memory.metric_points("http.server.request.duration") == []
    assert not [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]


async def test_a_metrics_app_mounted_at_metrics_is_excluded(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """prometheus-client's ASGI app mounted as its docs show (``app.mount("/metrics",
    make_asgi_app())``): Starlette redirects /metrics to /metrics/, where it answers; by
    default neither makes telemetry (every scrape made a span, a histogram point and an
    access line with no route)."""

    async def scrape(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"# metrics\n"})

    app = FastAPI()
    app.mount("/metrics", scrape)
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/metrics", follow_redirects=True)
    assert response.status_code == 200 and response.text == "# metrics\n"
    assert [r.url.path for r in response.history] == ["/metrics"]  # the redirect
    assert "x-request-id" not in response.headers
    assert memory.spans() == []
    assert memory.metric_points("http.server.request.duration") == []
    assert not [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")  # its test client
def test_a_websocket_passes_through_untouched(memory: Memory) -> None:
    """As the README says: a WebSocket connection makes no span and no access line, and its
    handler sees no request id; it works as without kiki."""
    from starlette.testclient import TestClient

    app = FastAPI()
    seen: list[str | None] = []

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        seen.append(kiki_otel.get_request_id())
        await websocket.send_text(await websocket.receive_text())
        await websocket.receive()  # the client's close

    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    with TestClient(app) as test_client, test_client.websocket_connect("/ws") as websocket:
        websocket.send_text("ping")
        assert websocket.receive_text() == "ping"
    assert seen == [None]
    assert memory.spans() == []


async def test_stable_http_metrics(app: FastAPI, memory: Memory) -> None:
    """http.server.request.duration (s) with semconv attributes; active requests back to 0."""
    async with client(app) as c:
        await c.get("/items/1")
        await c.get("/boom")
    points = memory.metric_points("http.server.request.duration")
    by_route = {p.attributes["http.route"]: p for p in points}
    ok = by_route["/items/{item_id}"]
    assert ok.attributes["http.response.status_code"] == 200
    assert ok.attributes["http.request.method"] == "GET"
    assert ok.count == 1 and 0 < ok.sum < 10
    assert by_route["/boom"].attributes["error.type"] == "RuntimeError"
    assert 0.005 in ok.explicit_bounds or 0.005 in tuple(ok.explicit_bounds)
    active = memory.metric_points("http.server.active_requests")
    assert active and all(p.value == 0 for p in active)


async def test_access_log_line_inside_the_span(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """One access-log line per request, with route, status, duration and the span's ids."""
    async with client(app) as c:
        response = await c.get("/items/3")
    (span,) = server_spans(memory)
    access = [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]
    assert len(access) == 1
    line = access[0]
    assert line["route"] == "/items/{item_id}" and line["status"] == 200
    assert line["method"] == "GET" and line["duration_ms"] >= 0
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["span_id"] == format(span.context.span_id, "016x")


async def test_configure_twice_does_not_duplicate(memory: Memory) -> None:
    """A second configure(app) adds no second middleware, span or access-log line."""
    app = make_app()
    first = kiki_otel.configure(app, metrics_exporter="none")
    second = kiki_otel.configure(app)
    assert first is second
    async with client(app) as c:
        await c.get("/items/1")
    assert len(server_spans(memory)) == 1


async def test_outgoing_httpx_carries_one_traceparent(
    memory: Memory, header_sink: HeaderSink
) -> None:
    """httpx calls inside a request carry exactly one traceparent of the same trace, even when
    the caller passed a stale one, and make one CLIENT span."""
    app = FastAPI()

    @app.get("/call")
    async def call() -> dict[str, str]:
        stale = "00-" + "f" * 32 + "-" + "f" * 16 + "-01"
        async with httpx.AsyncClient() as out:
            await out.get(header_sink.url, headers={"traceparent": stale})
        return {}

    kiki_otel.configure(app, metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/call")
    request_id = response.headers["x-request-id"]
    (values,) = [r.get_all("traceparent") or [] for r in header_sink.requests]
    assert len(values) == 1 and values[0].split("-")[1] == request_id
    # Only this request's trace: httpx instrumentation is process-wide, and other threads
    # (fixtures polling a server, say) may make calls of their own meanwhile.
    ours = [s for s in memory.spans() if format(s.context.trace_id, "032x") == request_id]
    assert sorted(s.kind.name for s in ours) == ["CLIENT", "SERVER"]


async def test_repeated_requests_counted_with_exemplars_of_their_traces(
    app: FastAPI, memory: Memory
) -> None:
    """After the first request of a route, records take the direct path: same counts, and
    exemplars still point at the requests' own traces."""
    async with client(app) as c:
        for _ in range(5):
            await c.get("/items/1")
    (point,) = memory.metric_points("http.server.request.duration")
    assert point.count == 5
    trace_ids = {s.context.trace_id for s in server_spans(memory)}
    assert len(trace_ids) == 5
    assert point.exemplars and {e.trace_id for e in point.exemplars} <= trace_ids


async def test_duration_buckets_include_the_latency_slo_threshold(
    app: FastAPI, memory: Memory
) -> None:
    """0.2 s is a bucket boundary, so 'p95 < 200 ms' is counted exactly by the SLO rules."""
    async with client(app) as c:
        await c.get("/items/1")
    (point,) = memory.metric_points("http.server.request.duration")
    assert 0.2 in point.explicit_bounds and 0.1 in point.explicit_bounds


async def test_mounted_sub_app_route_keeps_the_mount_prefix(memory: Memory) -> None:
    """A route inside app.mount('/sub', sub_app) is reported as '/sub/items/{i}'."""
    app, sub_app = FastAPI(), FastAPI()

    @sub_app.get("/items/{i}")
    async def items(i: int) -> dict[str, int]:
        return {"i": i}

    app.mount("/sub", sub_app)
    kiki_otel.configure(app, metrics_exporter="none")
    async with client(app) as c:
        assert (await c.get("/sub/items/3")).status_code == 200
    (span,) = server_spans(memory)
    assert span.name == "GET /sub/items/{i}"
    assert span.attributes["http.route"] == "/sub/items/{i}"


def _tenant_app() -> FastAPI:
    """``/tenants/{tenant}`` mounted, a route in it and a mount with a parameter below that."""
    app, tenant, deep = FastAPI(), FastAPI(), FastAPI()

    @tenant.get("/things/{x}")
    async def things(x: str) -> dict[str, str]:
        return {"x": x}

    @deep.get("/leaf/{y}")
    async def leaf(y: str) -> dict[str, str]:
        return {"y": y}

    tenant.mount("/deep/{z}", deep)
    app.mount("/tenants/{tenant}", tenant)
    return app


@pytest.mark.parametrize(
    ("paths", "route"),
    [
        (["/tenants/acme/things/1", "/tenants/globex/things/2"], "/tenants/{tenant}/things/{x}"),
        (
            ["/tenants/acme/deep/9/leaf/1", "/tenants/globex/deep/8/leaf/2"],
            "/tenants/{tenant}/deep/{z}/leaf/{y}",
        ),
    ],
)
@pytest.mark.parametrize("root_path", ["", "/api"])
async def test_a_mount_with_a_parameter_reports_its_template(
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    paths: list[str],
    route: str,
    root_path: str,
) -> None:
    """``app.mount("/tenants/{tenant}", sub)`` (nested too, behind ``--root-path`` too):
    ``http.route`` is the template, not the tenant (Starlette's ``root_path`` holds the
    value), in the span, its name, the metric (one series for all tenants) and the access
    line. The server's root path stays out of it, as for a route of the app itself."""
    app = _tenant_app()
    kiki_otel.configure(app, metrics_exporter="none")
    capsys.readouterr()
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path in paths:
            assert (await c.get(root_path + path)).status_code == 200, path
    assert [(s.name, s.attributes["http.route"]) for s in server_spans(memory)] == [
        (f"GET {route}", route)
    ] * 2
    (point,) = memory.metric_points("http.server.request.duration")
    assert point.attributes["http.route"] == route and point.count == 2
    access = [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]
    assert [l["route"] for l in access] == [route] * 2


async def test_each_app_matches_its_own_mounts(memory: Memory) -> None:
    """The same concrete prefix below two apps' mounts (``/t/{tenant}`` and ``/t/acme``)
    gets each app's template: what a prefix's mounts were is remembered per app."""
    apps = []
    for mount in ("/t/{tenant}", "/t/acme"):
        app, sub = FastAPI(), FastAPI()
        sub.get("/things/{x}")(lambda x: x)
        app.mount(mount, sub)
        kiki_otel.configure(app, metrics_exporter="none")
        apps.append(app)
    for app in apps * 2:
        async with client(app) as c:
            assert (await c.get("/t/acme/things/1")).status_code == 200
    assert [s.attributes["http.route"] for s in server_spans(memory)] == [
        "/t/{tenant}/things/{x}",
        "/t/acme/things/{x}",
    ] * 2


async def test_a_mount_in_an_included_router_keeps_no_parameter_value(memory: Memory) -> None:
    """A mount not matched again from the app's routes (one in an included ``APIRouter``):
    its concrete prefix is the route only when no mount had a parameter, else no route."""
    from fastapi import APIRouter

    app, sub = FastAPI(), FastAPI()

    @sub.get("/p/{q}")
    async def p(q: str) -> dict[str, str]:
        return {"q": q}

    for prefix in ("/fixed", "/org/{org}"):
        router = APIRouter()
        router.mount("/sub", sub)
        app.include_router(router, prefix=prefix)
    kiki_otel.configure(app, metrics_exporter="none")
    async with client(app) as c:
        assert (await c.get("/fixed/sub/p/1")).status_code == 200
        assert (await c.get("/org/acme/sub/p/1")).status_code == 200
    assert [s.attributes.get("http.route") for s in server_spans(memory)] == [
        "/fixed/sub/p/{q}",
        None,
    ]


async def test_static_files_report_their_mount_where_the_router_records_it(
    memory: Memory, tmp_path: Any
) -> None:
    """``StaticFiles`` has no routes: below a Starlette ``Router`` (which records the Mount
    as the route) a file's ``http.route`` is the mount's template, never the mount twice.
    FastAPI's router records no Mount, so a file it serves has none, as an unmatched path
    (the C end returns None for no route before asking ``_route_of``)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    (tmp_path / "a.txt").write_text("a")
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=tmp_path))
    app.mount("/site/{lang}", Starlette(routes=[Mount("/assets", StaticFiles(directory=tmp_path))]))
    kiki_otel.configure(app, metrics_exporter="none")
    async with client(app) as c:
        assert (await c.get("/site/en/assets/a.txt")).status_code == 200
        assert (await c.get("/static/a.txt")).status_code == 200
    spans = [(s.name, s.attributes.get("http.route")) for s in server_spans(memory)]
    assert spans == [("GET /site/{lang}/assets", "/site/{lang}/assets"), ("GET", None)]


async def test_server_end_of_response_work_runs_outside_the_request_trace(
    memory: Memory,
) -> None:
    """The server's handling of the last body message (where uvicorn arms its keep-alive
    timer and starts pipelined requests, both copying the current context) does not see
    the request span, so it is not kept alive there; the app's code after the response
    (background tasks) still does."""
    import contextvars

    from opentelemetry import trace

    app = FastAPI()
    after_response: list[str | None] = []

    @app.get("/items/{i}")
    async def items(i: int, background: BackgroundTasks) -> dict[str, int]:
        background.add_task(lambda: after_response.append(kiki_otel.get_request_id()))
        return {"i": i}

    kiki_otel.configure(app, metrics_exporter="none")
    captured: dict[str, contextvars.Context] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body" and message.get("more_body"):
            kind += ".partial"
        captured[kind] = contextvars.copy_context()  # what loop.call_later would keep

    await app(asgi_scope("/items/3"), receive, send)
    (span,) = server_spans(memory)

    def current_span_id() -> int:
        return trace.get_current_span().get_span_context().span_id

    assert captured["http.response.start"].run(current_span_id) == span.context.span_id
    assert captured["http.response.body"].run(current_span_id) == 0  # outside the trace
    assert after_response == [format(span.context.trace_id, "032x")]

    @app.get("/file")
    async def file() -> Any:
        from starlette.responses import FileResponse

        return FileResponse(__file__)

    captured.clear()  # a server with the pathsend extension gets the file as one message
    await app(asgi_scope("/file", extensions={"http.response.pathsend": {}}), receive, send)
    assert captured["http.response.pathsend"].run(current_span_id) == 0


async def test_exception_whose_str_raises_keeps_the_requests_telemetry(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An app exception whose ``__str__`` raises: the app's exception still reaches the
    server, the span ends ERROR with an exception event, the access line is written and
    the request's ids do not outlive it; ``log.exception`` about it does not raise."""

    class BadStr(Exception):
        def __str__(self) -> str:
            raise AttributeError("detail")

    @app.get("/badstr")
    async def badstr() -> None:
        try:
            raise BadStr
        except BadStr:
            kiki_otel.get_logger("app").exception("badstr.failed")
            raise

    capsys.readouterr()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        with pytest.raises(BadStr):
            await c.get("/badstr")
    assert kiki_otel.get_request_id() is None
    (span,) = server_spans(memory)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == BadStr.__qualname__
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.message"] == f"<unprintable {BadStr.__qualname__}>"
    assert "BadStr" in event.attributes["exception.stacktrace"]
    events = {line["event"]: line for line in log_lines(capsys.readouterr().out)}
    assert events["badstr.failed"]["exception"]["message"] == f"<unprintable {BadStr.__qualname__}>"
    assert events["http.request"]["status"] == 500


async def test_hostile_host_ports_are_ignored(app: FastAPI, memory: Memory) -> None:
    """``Host: h:²`` (a latin-1 digit h11 lets through) and a port beyond 65535: answered
    as usual, no ``server.port`` (and no encoder error per request)."""
    for host in (b"h:\xb2", b"h:99999999999999999999", b"h:8080"):
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any, sent: list[Any] = sent) -> None:
            sent.append(message)

        await app(asgi_scope("/items/1", headers=[(b"host", host)]), receive, send)
        assert sent[0]["status"] == 200
    ports = [s.attributes.get("server.port") for s in server_spans(memory)]
    assert ports == [None, None, 8080]


@pytest.mark.parametrize(
    ("host", "want"),
    [
        ("example.com:8443", ("example.com", 8443)),
        ("example.com", ("example.com", None)),
        ("[::1]:8000", ("[::1]", 8000)),
        ("[::1]", ("[::1]", None)),
        (":8000", (":8000", 8000)),
        ("h:\xb2", ("h", None)),
        ("h:99999999999999999999", ("h", None)),
        ("h:65536", ("h", None)),
        ("h:", ("h", None)),
    ],
)
def test_host_headers_parse_the_same_from_the_cache(host: str, want: tuple[Any, ...]) -> None:
    """``server.address``/``server.port`` of a Host value, parsed once then remembered."""
    from kiki_otel import _http_server

    _http_server._hosts.pop(host, None)
    assert _http_server._parse_host(host) == want
    assert _http_server._hosts[host] == want


def test_the_host_cache_is_bounded() -> None:
    """A client sending a new Host every request cannot grow the cache without bound."""
    from kiki_otel import _http_server

    for i in range(3 * _http_server._HOSTS_MAX):
        assert _http_server._parse_host(f"h{i}:{i}") == (f"h{i}", i)
        assert len(_http_server._hosts) <= _http_server._HOSTS_MAX


async def test_percent_encoded_sensitive_query_keys_are_redacted(
    app: FastAPI, memory: Memory
) -> None:
    """The app reads ``%74oken`` as ``token``: so does the redaction of ``url.query``."""
    async with client(app) as c:
        await c.get("/items/1?%74oken=s3cret&access%5Ftoken=s3cret2&Sig+=x&page=2")
    (span,) = server_spans(memory)
    query = span.attributes["url.query"]
    assert "s3cret" not in query and "=x" not in query
    assert query == "%74oken=REDACTED&access%5Ftoken=REDACTED&Sig+=REDACTED&page=2"


async def test_a_configured_sub_app_inside_a_configured_app_makes_one_span(
    memory: Memory,
) -> None:
    """``configure(app)`` and ``configure(sub)`` for a mounted sub-app (runnable alone too):
    one server span, and the response's request id is the one the handler sees."""
    app, sub = FastAPI(), FastAPI()

    @sub.get("/items/{i}")
    async def items(i: int) -> dict[str, Any]:
        return {"request_id": kiki_otel.get_request_id()}

    app.mount("/sub", sub)
    kiki_otel.configure(app, metrics_exporter="none")
    kiki_otel.configure(sub, metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/sub/items/1")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    (span,) = server_spans(memory)
    assert span.name == "GET /sub/items/{i}"


async def test_hostile_baggage_warns_once_and_briefly(
    app: FastAPI, memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A baggage header the propagator rejects member by member: its warnings (which echo
    the header) are rate-limited and cut short, not thousands of lines per request."""
    capsys.readouterr()
    async with client(app) as c:
        for _ in range(3):
            await c.get("/items/1", headers={"baggage": b"\xff," * 2700})
    warnings = [
        line
        for line in log_lines(capsys.readouterr().out)
        if line["logger"].startswith("opentelemetry")
    ]
    assert 1 <= len(warnings) <= 2
    assert all(len(line["event"]) <= 515 for line in warnings)


async def test_excluded_paths_stay_excluded_behind_a_root_path(memory: Memory) -> None:
    """Behind ``--root-path /api`` uvicorn's ``path`` is ``/api/health``: the probes (and
    other excluded paths) still make no span, metric point or access line."""
    app = make_app()
    telemetry = kiki_otel.configure(app, service_name="svc-root", metrics_exporter="none")
    telemetry.lifecycle.mark_ready()
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path in ("/api/health/live", "/api/health/ready", "/api/health", "/api/metrics"):
            assert (await c.get(path)).status_code == 200, path
        assert (await c.get("/api/items/1")).status_code == 200
    assert [s.attributes["url.path"] for s in server_spans(memory)] == ["/api/items/1"]


@pytest.mark.parametrize("trace_based", [False, True])
async def test_trace_based_logs_keep_records_of_sampled_traces_only(
    memory: Memory, capsys: pytest.CaptureFixture[str], trace_based: bool
) -> None:
    """``KIKI_OTEL_LOG_TRACE_BASED``: an unsampled request's lines stay on stdout but send no
    OTel record; a sampled request's and a line outside any trace still do. Off (the
    default), every line is a record."""
    app = make_app()
    kiki_otel.configure(app, metrics_exporter="none", log_trace_based=trace_based)
    capsys.readouterr()
    async with client(app) as c:
        await c.get("/items/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
        await c.get("/items/2", headers={"traceparent": f"00-{'1' * 32}-{PARENT}-01"})
    kiki_otel.get_logger("job").info("outside.any.trace")
    stdout = [line["event"] for line in log_lines(capsys.readouterr().out)]
    assert stdout.count("http.request") == 2 and "outside.any.trace" in stdout
    records = [(str(r.body), format(r.trace_id, "032x")) for r in memory.logs()]
    unsampled = [body for body, trace_id in records if trace_id == TRACE]
    assert bool(unsampled) is not trace_based  # item.loaded + http.request, or nothing
    assert ("http.request", "1" * 32) in records
    assert ("outside.any.trace", "0" * 32) in records


def _raising_processor(events: set[str] | None) -> Any:
    """A user's structlog processor that raises on ``events`` (on every line if None)."""

    def processor(_logger: Any, _method: str, event_dict: Any) -> Any:
        if events is None or event_dict.get("event") in events:
            raise RuntimeError("a broken user processor")
        return event_dict

    return processor


@pytest.mark.parametrize(
    "events",
    [
        pytest.param({"http.request"}, id="on-the-access-line"),
        pytest.param(None, id="on-every-line"),
    ],
)
async def test_a_logging_chain_that_raises_costs_only_the_line(
    memory: Memory, capfd: pytest.CaptureFixture[str], events: set[str] | None
) -> None:
    """A user's processor that raises: the response, the span and the metric stay, and the
    failure is reported (through the chain if it can, else on stderr)."""
    import structlog

    app = make_app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    structlog.configure(
        processors=[_raising_processor(events), structlog.processors.JSONRenderer()]
    )
    async with client(app) as c:
        response = await c.get("/forbidden")
    assert response.status_code == 403 and response.headers["x-request-id"]
    assert [s.name for s in server_spans(memory)] == ["GET /forbidden"]
    assert [p.count for p in memory.metric_points("http.server.request.duration")] == [1]
    out, err = capfd.readouterr()
    reported = [
        json.loads(line)
        for line in (out + err).splitlines()
        if line.startswith("{") and "http.telemetry.failed" in line
    ]
    assert len(reported) == 1 and "a broken user processor" in reported[0]["error"]
    if events is None:  # the chain failed the report too: stderr has it, with why
        assert "http.telemetry.failed" in err
        assert "a broken user processor" in reported[0]["logging_failed"]


async def test_a_span_processor_that_raises_costs_no_line_nor_metric(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's span processor whose ``on_end`` raises (the SDK passes it on): the response,
    the access line with its OTel record and the metric still go out, and it is reported."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor

    class Broken(SpanProcessor):
        def on_end(self, span: Any) -> None:
            raise KeyError("tenant")

    provider: Any = trace.get_tracer_provider()  # memory's SDK provider
    provider.add_span_processor(Broken())
    app = make_app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/forbidden")
    assert response.status_code == 403
    lines = log_lines(capsys.readouterr().out)
    assert [l["status"] for l in lines if l["event"] == "http.request"] == [403]
    assert [r.body for r in memory.logs() if r.body == "http.request"] == ["http.request"]
    assert [p.count for p in memory.metric_points("http.server.request.duration")] == [1]
    (failed,) = [l for l in lines if l["event"] == "http.telemetry.failed"]
    assert "tenant" in failed["error"]


async def test_the_servers_line_about_an_escaped_exception_has_the_requests_ids(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server logs an exception that escapes the app ("Exception in ASGI application")
    after the middleware left the request: the line and its OTel record still get the
    request's ids (the exception carries them), and a line outside any request does not."""
    import logging

    app = make_app()
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        with pytest.raises(RuntimeError, match="kaboom") as caught:
            await c.get("/boom")
    (span,) = server_spans(memory)
    request_id = format(span.context.trace_id, "032x")
    capsys.readouterr()
    server_log = logging.getLogger("uvicorn.error")
    server_log.error("Exception in ASGI application", exc_info=caught.value)
    server_log.error("unrelated failure", exc_info=ValueError("elsewhere"))
    # (only the server's lines: an earlier test's abandoned export may still report here)
    server_lines = [l for l in log_lines(capsys.readouterr().out) if l["logger"] == "uvicorn.error"]
    marked, unrelated = server_lines
    assert marked["event"] == "Exception in ASGI application"
    assert marked["request_id"] == marked["trace_id"] == request_id
    assert marked["span_id"] == format(span.context.span_id, "016x")
    assert marked["exception"]["type"] == "RuntimeError"
    assert "trace_id" not in unrelated
    records = {r.body: r for r in memory.logs()}
    assert records["Exception in ASGI application"].trace_id == span.context.trace_id
    assert records["unrelated failure"].trace_id == 0
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid  # detached again


def test_an_exception_that_refuses_attributes_is_left_unmarked() -> None:
    from opentelemetry.trace import SpanContext

    from kiki_otel._context import mark_exception, marked_span_context

    class Frozen(Exception):
        def __setattr__(self, name: str, value: object) -> None:
            raise RuntimeError("frozen")

    context = SpanContext(1, 2, is_remote=False)
    error = Frozen()
    mark_exception(error, context)
    assert marked_span_context(error) is None
    plain, inner = ValueError(), SpanContext(3, 4, is_remote=False)
    mark_exception(plain, inner)
    mark_exception(plain, context)  # an outer request: the innermost keeps it
    assert marked_span_context(plain) is inner


async def test_the_request_ends_when_its_response_is_sent_not_after_background_tasks(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """FastAPI runs background tasks after the response, within the same ASGI call: the
    span, the duration metric and the access line end at the response (the client's
    latency), and the background task still sees the request's trace."""
    import time

    app = FastAPI()
    seen: dict[str, Any] = {}

    async def send_receipt() -> None:
        seen["started_ns"] = time.time_ns()
        seen["request_id"] = kiki_otel.get_request_id()
        await asyncio.sleep(0.3)

    @app.post("/checkout")
    async def checkout(background: BackgroundTasks) -> dict[str, bool]:
        background.add_task(send_receipt)
        return {"ok": True}

    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.post("/checkout")
    (span,) = server_spans(memory)
    assert span.end_time <= seen["started_ns"]  # ended before the background task began
    assert seen["request_id"] == response.headers["x-request-id"]
    (line,) = [l for l in log_lines(capsys.readouterr().out) if l["event"] == "http.request"]
    # ordering, not speed: the recorded duration ends before the background task began
    bound_ms = (seen["started_ns"] - span.start_time) / 1e6 + 1.0  # 1 ms: two clocks read
    assert line["duration_ms"] <= bound_ms  # allowed: an ordering, whatever the machine's speed
    (point,) = memory.metric_points("http.server.request.duration")
    assert point.sum * 1e3 <= bound_ms  # allowed: the same ordering for the metric


@pytest.mark.parametrize("span_key", ["found", "unknown"])
async def test_the_app_runs_in_the_parent_context_with_the_request_span(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, span_key: str
) -> None:
    """The app's context is ``set_span_in_context(request span, extracted parent)``: the
    parent's baggage and the request span as current, whether the middleware sets the
    span key itself or (no key found through the API) calls ``set_span_in_context``."""
    from opentelemetry import baggage, trace

    from kiki_otel import _http_server

    if span_key == "unknown":
        monkeypatch.setattr(_http_server, "SPAN_KEY", None)
    app = FastAPI()

    @app.get("/seen")
    async def seen() -> dict[str, Any]:
        current = trace.get_current_span().get_span_context()
        return {"span": f"{current.span_id:016x}", "tenant": baggage.get_baggage("tenant")}

    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.get(
            "/seen",
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": "tenant=acme"},
        )
    (span,) = server_spans(memory)
    assert response.json() == {"span": f"{span.context.span_id:016x}", "tenant": "acme"}
    assert response.headers["x-request-id"] == TRACE == f"{span.context.trace_id:032x}"
    assert not trace.get_current_span().get_span_context().is_valid  # detached after


@pytest.mark.parametrize("name", [b"x-request-id", b"X-Request-ID"])
async def test_an_apps_own_request_id_header_gives_way_to_ours(memory: Memory, name: bytes) -> None:
    """An app answering its own X-Request-ID (lowercase as ASGI asks, or not) is answered
    with exactly one, ours; its other headers stay, in order."""
    from fastapi import Response

    app = FastAPI()

    @app.get("/own")
    async def own() -> Response:
        response = Response(b"ok", headers={"x-kept": "1"})
        response.raw_headers.insert(0, (name, b"app-chosen"))
        response.raw_headers.append((b"x-after", b"2"))
        return response

    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/own")
    (span,) = server_spans(memory)
    assert response.headers.get_list("x-request-id") == [format(span.context.trace_id, "032x")]
    names = [k.lower() for k, _ in response.headers.raw]
    assert names.index(b"x-kept") < names.index(b"x-after") < names.index(b"x-request-id")


@pytest.mark.parametrize("traceresponse", [True, False])
async def test_an_apps_own_traceresponse_gives_way_to_ours(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, traceresponse: bool
) -> None:
    """A response has one ``traceresponse``: an app's (or a downstream's it copied) gives way
    to ours, as its X-Request-ID does; with ours off, the app's stays. Server-Timing
    entries add up: the app's is kept beside ours."""
    from fastapi import Response

    app = FastAPI()

    @app.get("/own")
    async def own() -> Response:
        response = Response(b"ok")
        response.raw_headers.append((b"TraceResponse", b"00-app-set"))
        response.raw_headers.append((b"server-timing", b"db;dur=53"))
        return response

    monkeypatch.setenv("KIKI_OTEL_HTTP__TRACERESPONSE", str(traceresponse).lower())
    monkeypatch.setenv("KIKI_OTEL_HTTP__SERVER_TIMING", "true")
    kiki_otel.configure(app, service_name="svc-test", metrics_exporter="none")
    async with client(app) as c:
        response = await c.get("/own")
    (span,) = server_spans(memory)
    ids = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-03"
    assert response.headers.get_list("traceresponse") == [ids if traceresponse else "00-app-set"]
    assert response.headers.get_list("server-timing") == ["db;dur=53", f'traceparent;desc="{ids}"']


class _Without:
    """The C module without one of its names (what a build without it would offer)."""

    def __init__(self, module: Any, name: str) -> None:
        self._module, self._name = module, name

    def __getattr__(self, name: str) -> Any:
        if name == self._name:
            raise AttributeError(name)
        return getattr(self._module, name)


@pytest.fixture(params=["c", "python"])
def close_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each request closed by the C close (``_speedups.request_close``) or by its twin."""
    from kiki_otel import _http_server

    if request.param == "python":
        without = _Without(_http_server.speedups, "request_close")
        monkeypatch.setattr(_http_server, "speedups", without)
    elif getattr(_http_server.speedups, "request_close", None) is None:
        pytest.skip("the C module is not built here")
    return str(request.param)


def _batch_app(finish_batch: int = 8) -> FastAPI:
    """Each request binds its own structlog variable, so a line finished later must still
    carry its own request's context."""
    import structlog

    app = FastAPI()

    @app.get("/n/{n}")
    async def numbered(n: int) -> dict[str, int]:
        structlog.contextvars.bind_contextvars(n=n)
        return {"n": n}

    kiki_otel.configure(
        app, service_name="svc-test", metrics_exporter="none", http={"finish_batch": finish_batch}
    )
    return app


async def _serve(app: FastAPI, n: int) -> str:
    """One request to ``/n/{n}``, driven as an ASGI server does; its request id."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(asgi_scope(f"/n/{n}"), receive, send)
    return str(dict(sent[0]["headers"])[b"x-request-id"].decode())


async def _in_one_turn(app: FastAPI, numbers: list[int]) -> list[str]:
    """These requests, each in a task of its own as a server runs them, all started and
    ended in one turn of the event loop (nothing in them suspends); their request ids.
    The caller resumes in that same turn, after them."""
    tasks = [asyncio.create_task(_serve(app, n)) for n in numbers]
    await asyncio.sleep(0)
    assert all(task.done() for task in tasks)
    return [task.result() for task in tasks]


def _ids(memory: Memory) -> list[str]:
    return [format(s.context.trace_id, "032x") for s in server_spans(memory)]


def _access(out: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(out) if line["event"] == "http.request"]


@pytest.mark.usefixtures("close_path")
async def test_requests_ended_while_busy_are_finished_together_in_a_quiet_turn(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first request to end on a quiet loop is finished at once; those other tasks end
    while it is busy wait until a turn has ended none, and are finished at the start of
    the next, in the order they ended, each with its own ids, bound variables and end time."""
    app = _batch_app()
    capsys.readouterr()
    ids = await _in_one_turn(app, [1, 2, 3])
    assert _ids(memory) == ids[:1]  # the first, at once; 2 and 3 ended in a busy turn
    assert [line["request_id"] for line in _access(capsys.readouterr().out)] == ids[:1]
    await asyncio.sleep(0)  # a turn in which nothing ends
    assert _ids(memory) == ids[:1]
    await asyncio.sleep(0)  # the next: it starts with them
    assert _ids(memory) == ids
    lines = _access(capsys.readouterr().out)
    assert [(line["request_id"], line["n"], line["path"]) for line in lines] == [
        (ids[1], 2, "/n/2"),
        (ids[2], 3, "/n/3"),
    ]
    ends = [s.end_time for s in server_spans(memory)]
    assert ends == sorted(ends)  # taken when each ended, not when it was finished


@pytest.mark.usefixtures("close_path")
async def test_requests_wait_while_every_turn_ends_one(memory: Memory) -> None:
    """A turn that ends a request keeps the others waiting (a busy server ends some in
    nearly every turn); after the first turn that ends none, they are all finished."""
    app = _batch_app()
    first = await _in_one_turn(app, [1, 2])
    more = await _in_one_turn(app, [3])  # the next turn: it ends one too
    assert _ids(memory) == first[:1]
    await asyncio.sleep(0)  # ends none
    assert _ids(memory) == first[:1]
    await asyncio.sleep(0)
    assert _ids(memory) == first + more


@pytest.mark.usefixtures("close_path")
async def test_a_lone_request_and_one_clients_requests_are_finished_at_once(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """One request on a quiet loop, and requests served one after the other in one task (a
    test's client, in one turn or not): each span and line is out before the caller goes
    on, as they are without batches."""
    app = _batch_app()
    await _in_one_turn(app, [1])
    assert len(server_spans(memory)) == 1
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # quiet again
    for n in (2, 3, 4):  # one task, no suspension between them: one turn
        await _serve(app, n)
        assert len(server_spans(memory)) == n
    assert [line["n"] for line in _access(capsys.readouterr().out)] == [1, 2, 3, 4]


@pytest.mark.usefixtures("close_path")
async def test_a_full_batch_is_finished_at_its_last_requests_end(memory: Memory) -> None:
    """When ``finish_batch`` requests wait, they are finished there and then, where the
    last one's own work would have run: one turn never holds the loop for more than a
    batch, and the loop's quiet turns are not the only way out."""
    app = _batch_app(finish_batch=4)
    tasks = [asyncio.create_task(_serve(app, n)) for n in range(7)]
    for _ in range(3):  # let them all end (the first at once, then 4 together, 2 waiting)
        await asyncio.sleep(0)
        if all(task.done() for task in tasks):
            break
    ids = [task.result() for task in tasks]
    assert sorted(_ids(memory)[:5]) == sorted(ids[:5]) and len(_ids(memory)) in (5, 7)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sorted(_ids(memory)) == sorted(ids)


@pytest.mark.usefixtures("close_path")
async def test_finish_batch_1_finishes_each_request_at_once(memory: Memory) -> None:
    """``KIKI_OTEL_HTTP__FINISH_BATCH=1``: no request waits, whoever ends it."""
    app = _batch_app(finish_batch=1)
    ids = await _in_one_turn(app, [1, 2, 3])
    assert _ids(memory) == ids


@pytest.mark.usefixtures("close_path")
async def test_a_failure_in_a_batch_costs_only_its_request(
    memory: Memory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose telemetry fails (here its access line) is reported; the others in
    its batch are finished."""
    from kiki_otel._access_log import DirectAccessLog

    real = DirectAccessLog.__call__

    def failing(self: DirectAccessLog, method: Any, path: str, *rest: Any) -> None:
        if path == "/n/2":
            raise RuntimeError("line failed")
        real(self, method, path, *rest)

    monkeypatch.setattr(DirectAccessLog, "__call__", failing)
    monkeypatch.setattr(DirectAccessLog, "_native", lambda self: None)  # (C: its twin's)
    app = _batch_app()
    capsys.readouterr()
    ids = await _in_one_turn(app, [1, 2, 3])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _ids(memory) == ids
    lines = log_lines(capsys.readouterr().out)
    assert [line["n"] for line in lines if line["event"] == "http.request"] == [1, 3]
    (failed,) = [line for line in lines if line["event"] == "http.telemetry.failed"]
    assert "line failed" in failed["error"]


@pytest.mark.usefixtures("close_path")
def test_requests_left_waiting_by_a_closed_loop_are_finished_on_the_next(
    memory: Memory,
) -> None:
    """A loop closed while requests waited (a test's loop, a portal's) strands nothing:
    the next request to end, on another loop, finishes them first."""
    app = _batch_app()
    loop = asyncio.new_event_loop()
    try:
        ids = loop.run_until_complete(_in_one_turn(app, [1, 2]))
    finally:
        loop.close()  # before the turn that would have finished request 2
    assert _ids(memory) == ids[:1]
    later = asyncio.run(_serve(app, 3))
    assert _ids(memory) == [*ids, later]


@pytest.mark.usefixtures("close_path")
async def test_the_shutdown_finishes_waiting_requests_before_its_flush(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """What waits when the shutdown starts is finished before the exporters flush."""
    app = _batch_app()
    ids = await _in_one_turn(app, [1, 2, 3])
    report = await kiki_otel.configure().ashutdown()
    assert report.clean
    assert _ids(memory) == ids
    assert [line["n"] for line in _access(capsys.readouterr().out)] == [1, 2, 3]


def _mounted_app() -> FastAPI:
    """make_app() with a sub-application mounted at /sub (a route below a root path), and
    at /t/{tenant} (a mount's template, not its value)."""
    outer = make_app()
    sub = FastAPI()

    @sub.get("/plans/{plan_id}")
    async def plan(plan_id: int) -> dict[str, int]:
        return {"plan": plan_id}

    outer.mount("/sub", sub)
    outer.mount("/t/{tenant}", sub)
    return outer


def _telemetry(
    app: Any, tracer_provider: Any = None, meter_provider: Any = None, settings: Any = None
) -> Any:
    """kiki's server middleware around ``app`` alone, with its own SDK providers."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from kiki_otel import _http_server
    from kiki_otel._settings import Settings

    return _http_server.ServerTelemetry(
        app,
        settings=settings or Settings(),
        tracer_provider=tracer_provider or TracerProvider(shutdown_on_exit=False),
        meter_provider=meter_provider or MeterProvider(shutdown_on_exit=False),
    )


async def _finished_by(end: str, sampler: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What requests leave behind when ``_finish`` is C's (``end``: "c") or its twin's."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from kiki_otel import _http_server

    if end == "python":
        monkeypatch.setattr(_http_server, "speedups", None)
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = _telemetry(
        _mounted_app(),
        tracer_provider,
        MeterProvider(metric_readers=[reader], shutdown_on_exit=False),
    )
    kind = type(telemetry._finish_request).__name__
    assert kind == ("RequestEnd" if end == "c" else "method")
    transport = httpx.ASGITransport(app=telemetry, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path in ("/items/3", "/nope", "/items/x", "/teapot", "/forbidden", "/boom"):
            await c.get(path)
        await c.request("BREW", "/items/3")
        await c.get("/sub/plans/7", headers={"user-agent": "t"})
        await c.get("/t/acme/plans/8")
    monkeypatch.undo()
    points = sorted(
        (sorted(p.attributes.items()), p.count)
        for scope in reader.get_metrics_data().resource_metrics[0].scope_metrics  # type: ignore[union-attr]
        for metric in scope.metrics
        if metric.name == "http.server.request.duration"
        for p in metric.data.data_points
    )
    finished = [
        (s.name, sorted(s.attributes.items()), s.status.status_code, len(s.events))
        for s in spans.get_finished_spans()
    ]
    return points, finished


@pytest.mark.parametrize("sampled", [True, False])
async def test_the_c_end_finishes_requests_as_its_twin(
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sampled: bool,
) -> None:
    """``_speedups.request_end`` against ``ServerTelemetry._finish``: the same metric
    points, spans (names, attributes, status) and access lines for each kind of request,
    the ones it hands to its twin (errors, 5xx) included, a mounted route among them."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from kiki_otel import _http_server

    if getattr(_http_server.speedups, "request_end", None) is None:
        pytest.skip("the C module is not built here")
    kiki_otel.configure(FastAPI(), service_name="svc-end", metrics_exporter="none")
    sampler = ALWAYS_ON if sampled else ALWAYS_OFF
    ignored = {"timestamp", "duration_ms", "trace_id", "request_id", "span_id"}
    results = []
    for end in ("c", "python"):
        capsys.readouterr()
        points, finished = await _finished_by(end, sampler, monkeypatch)
        lines = [
            {k: v for k, v in line.items() if k not in ignored}
            for line in log_lines(capsys.readouterr().out)
            if line["event"] == "http.request"
        ]
        results.append((points, finished, lines))
    assert results[0] == results[1]
    points, finished, lines = results[0]
    assert len(lines) == 9 and len(finished) == (9 if sampled else 0)
    assert {"route": "/sub/plans/{plan_id}", "status": 200}.items() <= lines[-2].items()
    assert {"route": "/t/{tenant}/plans/{plan_id}", "status": 200}.items() <= lines[-1].items()
    assert [line["status"] for line in lines] == [200, 404, 422, 418, 403, 500, 405, 200, 200]


class _GoneStorages:
    """A measurement consumer whose readers cannot be read (a broken SDK internal)."""

    @property
    def _reader_storages(self) -> Any:
        raise RuntimeError("storages gone")


@pytest.mark.parametrize("end", ["c", "python"])
async def test_a_failing_metric_still_ends_the_span_and_logs_the_line(
    memory: Memory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """The histogram's record raises: the span still ends, the access line is still
    written, and the failure is reported once the request's telemetry is done."""
    from kiki_otel import _http_server

    if end == "python":
        monkeypatch.setattr(_http_server, "speedups", None)
    elif getattr(_http_server.speedups, "request_end", None) is None:
        pytest.skip("the C module is not built here")
    app = make_app()
    kiki_otel.configure(app, service_name="svc-end", metrics_exporter="none")
    async with client(app) as c:
        await c.get("/items/1")  # built on the first request
        stack: Any = app.middleware_stack
        telemetry = layer_of(stack)
        while not isinstance(telemetry, _http_server.ServerTelemetry):
            telemetry = layer_of(telemetry.app)
        fast = getattr(telemetry._fast_duration, "twin", telemetry._fast_duration).__self__
        fast._consumer = _GoneStorages()
        capsys.readouterr()
        response = await c.get("/items/2")
    assert response.status_code == 200
    lines = log_lines(capsys.readouterr().out)
    assert [line["path"] for line in lines if line["event"] == "http.request"] == ["/items/2"]
    (failed,) = [line for line in lines if line["event"] == "http.telemetry.failed"]
    assert "storages gone" in failed["error"]
    assert [s.attributes["url.path"] for s in server_spans(memory)] == ["/items/1", "/items/2"]


_BEGIN_REQUESTS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("GET", "/items/3", []),
    ("GET", "/items/4?token=s&x=1", [("user-agent", "t"), ("host", "h:8080")]),
    ("GET", "/items/5", [("traceparent", f"00-{TRACE}-{PARENT}-01")]),
    ("GET", "/items/6", [("traceparent", f"00-{TRACE}-{PARENT}-00"), ("baggage", "k=v")]),
    ("GET", "/items/7", [("x-request-id", "client-7")]),
    ("GET", "/items/8", [("x-request-id", "bad id<script>")]),
    ("BREW", "/items/9", []),
    ("GET", "/nope", [("traceparent", "garbage")]),
    ("GET", "/items/10", [("traceparent", f"00-{TRACE}-{PARENT}-01")] * 2),  # the twin's
]


async def _begun_by(
    begin: str, sampler: Any, monkeypatch: pytest.MonkeyPatch, vendor: bool = False
) -> tuple[list[Any], list[str]]:
    """What ``_BEGIN_REQUESTS`` leave behind when ``_begin`` is C's (``begin``: "c") or
    its twin's: per request its response's id headers, span and access line, with the
    random ids seeded alike; and the paths of the requests the twin started."""
    import random

    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from kiki_otel import _http_server

    if vendor:  # a propagator kiki does not know: every request extracts
        composite = CompositePropagator([TraceContextTextMapPropagator(), _NamedPropagator()])
        monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", composite)
    twin_calls = []
    twin = _http_server.ServerTelemetry._begin

    def counted(self: Any, scope: Any, send: Any) -> Any:
        twin_calls.append(scope["path"])
        return twin(self, scope, send)

    monkeypatch.setattr(_http_server.ServerTelemetry, "_begin", counted)
    monkeypatch.setattr(_http_server, "_w3c_only", (None, False))  # (the first: the twin's)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = _telemetry(make_app(), tracer_provider)
    assert type(telemetry._begin_request).__name__ == "RequestBegin"
    if begin == "python":
        telemetry._begin_request = telemetry._begin
    transport = httpx.ASGITransport(app=telemetry, raise_app_exceptions=False)
    results = []
    before = otel_context.get_current()
    random.seed(21)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for method, path, headers in _BEGIN_REQUESTS:
            response = await c.request(method, path, headers=headers)
            ids = (response.headers.get("x-request-id"), response.headers.get("traceresponse"))
            results.append(ids)
    assert otel_context.get_current() is before
    monkeypatch.undo()
    finished = [
        (s.name, s.context.trace_id, s.context.span_id, s.parent, sorted(s.attributes.items()))
        for s in spans.get_finished_spans()
    ]
    return [results, finished], twin_calls


async def test_a_patched_get_global_textmap_is_called_by_the_c_begin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C begin reads the global propagator from the API's module while its
    ``get_global_textmap`` is the API's own (``_TEXTMAP_GET``); patched, it is called."""
    from opentelemetry import propagate

    from kiki_otel import _http_server

    if getattr(_http_server.speedups, "request_begin", None) is None:
        pytest.skip("the C module is not built here")
    assert _http_server._TEXTMAP_GET is propagate.get_global_textmap
    calls: list[str] = []
    twin_calls: list[str] = []
    original, twin = propagate.get_global_textmap, _http_server.ServerTelemetry._begin

    def counted() -> Any:
        calls.append("get")
        return original()

    def counted_twin(self: Any, scope: Any, send: Any) -> Any:
        twin_calls.append(scope["path"])
        return twin(self, scope, send)

    monkeypatch.setattr(propagate, "get_global_textmap", counted)
    monkeypatch.setattr(_http_server.ServerTelemetry, "_begin", counted_twin)
    telemetry = _telemetry(make_app())
    transport = httpx.ASGITransport(app=telemetry)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(4):
            assert (await c.get("/items/1")).status_code == 200
    assert len(twin_calls) <= 1 and len(calls) == 4 + len(twin_calls)


class _NamedPropagator:
    """A propagator outside the W3C pair (``x-vendor-trace``), which finds nothing here."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context if context is not None else otel_context.Context()

    def inject(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {"x-vendor-trace"}


@pytest.mark.parametrize(
    ("sampled", "vendor"),
    [(True, False), (False, False), (True, True)],
    ids=["on", "off", "vendor"],
)
async def test_the_c_begin_starts_requests_as_its_twin(
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sampled: bool,
    vendor: bool,
) -> None:
    """``_speedups.request_begin`` against ``ServerTelemetry._begin``: the same ids in the
    same response headers, the same spans (names, ids, parents, attributes) and access
    lines, for new and continued traces, baggage, a client's id (good and rejected), an
    unknown method and a bad traceparent; a propagator not seen before and a duplicated
    traceparent go to the twin."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from kiki_otel import _http_server

    if getattr(_http_server.speedups, "request_begin", None) is None:
        pytest.skip("the C module is not built here")
    kiki_otel.configure(FastAPI(), service_name="svc-begin", metrics_exporter="none")
    sampler = ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF)
    ignored = {"timestamp", "duration_ms"}
    results = []
    for begin in ("c", "python"):
        capsys.readouterr()
        made, twin_calls = await _begun_by(begin, sampler, monkeypatch, vendor)
        lines = [
            {k: v for k, v in line.items() if k not in ignored}
            for line in log_lines(capsys.readouterr().out)
            if line["event"] in ("http.request", "item.loaded", "http.client_request_id.rejected")
        ]
        results.append((made, lines))
        # C's: a propagator not seen before, a duplicated traceparent
        assert twin_calls == (["/items/3", "/items/10"] if begin == "c" else twin_calls)
    assert results[0] == results[1]
    (ids, finished), lines = results[0]
    assert len(ids) == len(_BEGIN_REQUESTS) and all(request_id for request_id, _ in ids)
    assert ids[2][0] == TRACE and ids[3][0] == TRACE and ids[8][0] != TRACE
    # ParentBased: all but the unsampled parent's, or only the sampled parent's
    assert len(finished) == (len(_BEGIN_REQUESTS) - 1 if sampled else 1)
    accepted = [line for line in lines if line.get("client_request_id") == "client-7"]
    assert {line["event"] for line in accepted} == {"http.request", "item.loaded"}
    assert [line["event"] for line in lines].count("http.client_request_id.rejected") == 1


@pytest.mark.own_process
def test_a_request_start_frees_what_it_made(memory: Memory) -> None:
    """The C start gives back what its twin gives (same seed, same ids, the same ids
    remembered for the lines), and keeps no reference to what it made or was given: 20k
    starts, each undone as ``_traced`` does."""
    import gc
    import random
    import sys
    import tracemalloc

    from kiki_otel import _context, _http_server
    from kiki_otel._context import CURRENT, SPAN_KEY

    if getattr(_http_server.speedups, "request_begin", None) is None:
        pytest.skip("the C module is not built here")
    telemetry = _telemetry(make_app())
    scope = asgi_scope("/items/1", headers=[(b"host", b"t"), (b"traceparent", b"bad")])

    async def send(message: Any) -> None:
        return None

    def once(start: Any) -> tuple[Any, ...]:
        _context._last_hex = (None, None)
        state, span, span_context, current, token, client_token, active, entry, _ = start(
            scope, send
        )
        entry[0] -= 1
        CURRENT.reset(token)  # type: ignore[union-attr]
        assert client_token is None and current[4] is span_context
        assert current[0][SPAN_KEY] is span
        # the ids remembered for the request's lines (remember_ids; C sets them itself)
        assert _context._last_hex == (span_context, current[5])
        return state.headers, state.outer, current[1:], list(current[0]), active, entry

    random.seed(5)
    made = once(telemetry._begin_request)
    random.seed(5)
    assert made == once(telemetry._begin)
    before = sys.getrefcount(scope), sys.getrefcount(send)
    for _ in range(2_000):
        once(telemetry._begin_request)
    gc.collect()
    trace_memory()
    first = tracemalloc.take_snapshot()
    for _ in range(20_000):
        once(telemetry._begin_request)
    last = tracemalloc.take_snapshot()
    # what the start's code kept (not pytest's or the SDK's own bookkeeping)
    mine = [
        tracemalloc.Filter(True, p)
        for p in (__file__, "*/kiki_otel/_http_server.py", "*/kiki_otel/_fast_span.py")
    ]
    diff = last.filter_traces(mine).compare_to(first.filter_traces(mine), "lineno")
    # one object a start kept would be >= 320 kB; free lists filled meanwhile (a tuple of
    # each size reused across tests) show as up to a few hundred objects
    assert sum(d.size_diff for d in diff) < 100_000, [str(d) for d in diff[:8]]
    assert (sys.getrefcount(scope), sys.getrefcount(send)) == before


def _starts(started: list[str]) -> Any:
    """A span processor that notes each span's start (the direct path calls no on_start)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Starts(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            started.append(span.name)

    return Starts()


@pytest.mark.parametrize("change", ["processor-added", "tracer-disabled", "few-attributes"])
async def test_a_request_starts_the_sdks_way_when_the_direct_span_cannot_be(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The start's check of the direct span path (``DirectSpans.usable``, in C with the C
    start): a processor added after setup, a tracer turned off, a span limit below the
    request's attributes each send the span the SDK's way, as the twin does."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from kiki_otel import _http_server

    limits = SpanLimits(max_span_attributes=5) if change == "few-attributes" else None
    results = []
    started: list[str] = []
    for begin in ("c", "python"):
        first, added = InMemorySpanExporter(), InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(first))
        telemetry = _telemetry(make_app(), provider)
        if begin == "python" or getattr(_http_server.speedups, "request_begin", None) is None:
            telemetry._begin_request = telemetry._begin
        tracer = telemetry._tracer
        if change == "processor-added":  # (one that sees spans start, as the SDK's way does)
            provider.add_span_processor(SimpleSpanProcessor(added))
            provider.add_span_processor(_starts(started))
        elif change == "tracer-disabled":
            tracer._tracer_config = type(tracer._tracer_config)(is_enabled=False)  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=telemetry, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(2):  # (the first may be the twin's: a propagator not seen yet)
                response = await c.get("/items/3?x=1", headers={"user-agent": "t"})
                assert response.status_code == 200 and response.headers["x-request-id"]
        spans = [(s.name, sorted(s.attributes)) for s in [*first.get_finished_spans()]] + [
            (s.name, sorted(s.attributes)) for s in added.get_finished_spans()
        ]
        results.append(spans)
    assert results[0] == results[1]
    if change == "processor-added":  # both processors got both spans, all attributes
        assert len(results[0]) == 4 and "user_agent.original" in results[0][1][1]
        assert started == ["GET"] * 4
    elif change == "tracer-disabled":
        assert results[0] == []
    else:
        assert [len(attributes) for _, attributes in results[0]] == [5, 5]


_DISPATCH_SCOPES: list[dict[str, Any]] = [
    asgi_scope("/items/1"),
    asgi_scope("/items/1", **{"kiki_otel.traced": True}),  # an outer kiki traces it
    asgi_scope("/items/1", **{"fastapi.telemetry": "theirs"}),
    asgi_scope("/health"),
    asgi_scope("/api/health/ready", root_path="/api"),
    asgi_scope("/api/items/1", root_path="/api"),
    asgi_scope("/other/health", root_path="/api"),
    {"type": "websocket", "path": "/ws"},
    {"type": "lifespan"},
    {"type": 7, "path": "/items/1"},  # (the twin's)
]


def test_the_c_dispatch_routes_requests_as_its_twin() -> None:
    """``_speedups.request_dispatch`` against ``ServerTelemetry._dispatch``: the same scope
    afterwards (FastAPI's guard key, the traced key) and the same callee (the app or
    ``_traced``), for traced, excluded, nested, websocket and lifespan scopes; a scope
    without a type raises the same KeyError."""
    import copy

    from kiki_otel import _asgi, _http_server

    if getattr(_http_server.speedups, "request_dispatch", None) is None:
        pytest.skip("the C module is not built here")
    telemetry = _telemetry(make_app())
    assert _asgi.direct_call(telemetry) is telemetry._native_dispatch
    called: list[str] = []
    telemetry._app = lambda *args: called.append("app")  # type: ignore[assignment]
    telemetry._traced = lambda *args: called.append("traced")
    native = _http_server.speedups.request_dispatch(
        telemetry._dispatch,
        telemetry._app,
        telemetry._traced,
        telemetry._excluded,
        telemetry._below_root,
        _http_server._FASTAPI_NATIVE_KEY,
        _http_server._TRACED_KEY,
    )
    callees = []
    for scope in _DISPATCH_SCOPES:
        done = []
        for dispatch in (native, telemetry._dispatch):
            mine = copy.deepcopy(scope)
            dispatch(mine, None, None)
            done.append((mine, called.pop()))
        assert done[0] == done[1], scope
        callees.append(done[0][1])
    assert callees == ["traced", "app", "traced", "app", "app", "traced", "traced"] + ["app"] * 3
    for dispatch in (native, telemetry._dispatch):
        with pytest.raises(KeyError, match="type"):
            dispatch({"path": "/"}, None, None)
        with pytest.raises(KeyError, match="path"):
            dispatch({"type": "http"}, None, None)


class _Traced:
    """A ServerTelemetry whose traced request runs ``app``, recording what it begins, sends
    and closes; ``ways`` are its C run (``_speedups.request_traced``) and the twin's."""

    def __init__(self, app: Any, settings: Any = None) -> None:
        from kiki_otel import _http_server

        self.telemetry = telemetry = _telemetry(make_app(), settings=settings)
        self.begun: list[Any] = []
        self.closed: list[Any] = []  # the error each close was given
        self.sent: list[Any] = []
        self.send_fails = False
        begin, close = telemetry._begin_request, telemetry._close_request

        def begin_counted(*args: Any) -> Any:
            self.begun.append(args[0]["path"])
            return begin(*args)

        def close_counted(*args: Any) -> Any:
            self.closed.append(args[4])
            return close(*args)

        # set after it was built: read per request, as the twin reads them
        telemetry._begin_request, telemetry._close_request = begin_counted, close_counted
        telemetry._app = app
        self.ways = {"python": telemetry._run}
        if getattr(_http_server.speedups, "request_traced", None) is not None:
            assert type(telemetry._traced).__name__ == "RequestTraced"
            self.ways["c"] = telemetry._traced

    async def send(self, message: Any) -> None:
        self.sent.append(message.get("status", message["type"]))
        if self.send_fails:
            raise OSError("the connection is gone")

    def run(self, way: str) -> Any:
        """The awaitable (C's) or coroutine (the twin's) of one request, not started."""
        return self.ways[way](asgi_scope("/items/1"), _no_body, self.send)

    def reset(self) -> None:
        self.begun.clear(), self.closed.clear(), self.sent.clear()


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Awaitable:
    """Not a coroutine: an object whose ``__await__`` is a generator (yields once)."""

    def __init__(self, send: Any) -> None:
        self._send = send

    def __await__(self) -> Any:
        yield None
        return (yield from self._respond().__await__())

    async def _respond(self) -> str:
        await self._send({"type": "http.response.start", "status": 204, "headers": []})
        await self._send({"type": "http.response.body", "body": b""})
        return "ignored"


async def _outcome(traced: _Traced, way: str) -> tuple[Any, ...]:
    from kiki_otel._context import marked_span_context

    raised: BaseException | None = None
    try:
        result = await traced.run(way)
    except BaseException as error:  # (CancelledError too)
        raised = error
    if raised is None:
        outcome: tuple[Any, ...] = ("returned", result)
        closed = [repr(e) for e in traced.closed]
    else:
        marked = marked_span_context(raised) is not None
        outcome = ("raised", type(raised).__name__, str(raised), marked)
        closed = [type(e).__name__ for e in traced.closed]
        assert traced.closed == [raised]  # the very error, closed with once
    return (*outcome, traced.begun[:], closed, traced.sent[:])


async def _answers(receive: Any, send: Any) -> str:
    await asyncio.sleep(0)  # (a turn of the loop in between: the run steps more than once)
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"x"})
    return "ignored"  # (a traced request returns None whatever the app returns)


_TRACED_APPS: dict[str, Any] = {
    "answers": lambda scope, receive, send: _answers(receive, send),
    "fails-first": lambda scope, receive, send: _fails(ValueError("first"), None, send),
    "fails-later": lambda scope, receive, send: _fails(RuntimeError("later"), 200, send),
    "cancelled": lambda scope, receive, send: _fails(asyncio.CancelledError(), None, send),
    "not-awaitable": lambda scope, receive, send: 42,
    "app-call-fails": lambda scope, receive, send: {}["missing"],
    "awaitable": lambda scope, receive, send: _Awaitable(send),
}


async def _fails(error: BaseException, status: int | None, send: Any) -> None:
    await asyncio.sleep(0)
    if status is not None:
        await send({"type": "http.response.start", "status": status, "headers": []})
    raise error


@pytest.mark.parametrize("app", sorted(_TRACED_APPS))
async def test_the_c_traced_run_ends_requests_as_its_twin(app: str) -> None:
    """``_speedups.request_traced`` against ``ServerTelemetry._run`` for an app that
    answers, fails before or after its response started, is cancelled, is not awaitable,
    fails being called, or is an awaitable of another kind: the same result or error (the
    very error, marked with the request), begun and closed once with the same error, the
    same messages sent (500 for an Exception or a cancellation before the response
    started)."""
    traced = _Traced(_TRACED_APPS[app])
    if "c" not in traced.ways:
        pytest.skip("the C module is not built here")
    outcomes = []
    for way in ("c", "python"):
        traced.reset()
        outcomes.append(await _outcome(traced, way))
    assert outcomes[0] == outcomes[1]
    kind, *_, begun, closed, sent = outcomes[0]
    assert begun == ["/items/1"] and len(closed) == 1
    want_sent = {"answers": [201, "http.response.body"], "awaitable": [204, "http.response.body"]}
    want_sent |= {"fails-later": [200]}
    assert sent == want_sent.get(app, [500, "http.response.body"])
    assert kind == ("returned" if app in ("answers", "awaitable") else "raised")


async def test_a_cancelled_task_closes_its_traced_request_once() -> None:
    """A server cancelling the request's task while the app waits (uvicorn at
    --timeout-graceful-shutdown): CancelledError out of the app, answered 500 by us (with the
    request's id: uvicorn's own has none), the request closed with it, both ways; a send
    that fails then does not replace the cancellation."""
    waiting = asyncio.Event()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        waiting.set()
        await asyncio.Event().wait()

    traced = _Traced(waits)
    for send_fails, sent in ((False, [500, "http.response.body"]), (True, [500])):
        traced.send_fails = send_fails
        for way in traced.ways:
            traced.reset()
            waiting.clear()
            task = asyncio.ensure_future(traced.run(way))
            await waiting.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert [type(e) for e in traced.closed] == [asyncio.CancelledError], way
            assert traced.sent == sent, way


class _Stepped:
    """An app suspended at a future of ours, with what it saw (and whether the request was
    closed by then: an app is closed before its request)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None
        self.ended: list[str] = []
        self.closed: list[Any] = []  # (the _Traced's)
        self.refuse_exit = False  # closed, it raises RuntimeError

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.future = asyncio.get_running_loop().create_future()
        try:
            await self.future
        except BaseException as error:
            self.ended.append(type(error).__name__ + (" after" if self.closed else ""))
            if self.refuse_exit and isinstance(error, GeneratorExit):
                raise RuntimeError("cleanup failed") from None
            raise


async def test_a_traced_run_thrown_into_closed_or_dropped_ends_its_request() -> None:
    """Driven by hand: an error thrown in while the app waits goes through the app (500,
    raised, closed with it); close() closes the app first, then the request with
    GeneratorExit, or with what closing the app raised (a 500, and close() raises it);
    dropped unfinished, the same as close(). Both ways alike."""
    import gc

    app = _Stepped()
    traced = _Traced(app)
    app.closed = traced.closed
    seen: dict[str, list[Any]] = {}
    for way in traced.ways:
        results: list[Any] = []
        traced.reset(), app.ended.clear()
        run = traced.run(way)
        run.send(None)  # (the app's future)
        with pytest.raises(ValueError, match="thrown"):
            run.throw(ValueError("thrown"))
        results.append((app.ended[:], traced.sent[:], [type(e) for e in traced.closed]))
        traced.reset(), app.ended.clear()
        run = traced.run(way)
        run.send(None)
        assert run.close() is None
        assert run.close() is None  # (again: nothing more)
        results.append((app.ended[:], [type(e) for e in traced.closed]))
        traced.reset(), app.ended.clear()
        run = traced.run(way)
        run.send(None)
        del run
        gc.collect()
        results.append((app.ended[:], [type(e) for e in traced.closed]))
        traced.reset(), app.ended.clear()
        app.refuse_exit = True
        run = traced.run(way)
        run.send(None)
        with pytest.raises(RuntimeError, match="cleanup failed"):
            run.close()  # (what closing the app raised goes through the request: a 500)
        app.refuse_exit = False
        results.append((app.ended[:], traced.sent[:], [type(e) for e in traced.closed]))
        seen[way] = results
    assert seen["python"] == [
        (["ValueError"], [500, "http.response.body"], [ValueError]),
        (["GeneratorExit"], [GeneratorExit]),
        (["GeneratorExit"], [GeneratorExit]),
        (["GeneratorExit"], [500, "http.response.body"], [RuntimeError]),
    ]
    assert seen.get("c", seen["python"]) == seen["python"]


async def test_a_traced_run_closed_while_answering_500_closes_its_request_once() -> None:
    """The 500's send waits; close() then: the request closed once, with the app's error,
    and nothing raised (both ways)."""
    traced = _Traced(lambda scope, receive, send: _fails(KeyError("app"), None, send))
    blocked: list[Any] = []

    async def send(message: Any) -> None:
        blocked.append(message["status"])
        await asyncio.get_running_loop().create_future()  # never done

    for way in traced.ways:
        traced.reset(), blocked.clear()
        run = traced.ways[way](asgi_scope("/items/1"), _no_body, send)
        run.send(None)  # the app's sleep
        run.send(None)  # its error: the 500 being sent
        assert blocked == [500]
        assert run.close() is None
        assert [type(e) for e in traced.closed] == [KeyError], way


async def test_a_traced_run_refuses_what_a_coroutine_refuses() -> None:
    """Awaited twice, sent a value before it started, thrown into before it started (raised,
    nothing begun), its begin failing (raised, nothing closed): as the twin's coroutine. And
    throw()'s bad arguments are errors."""
    traced = _Traced(_TRACED_APPS["answers"])
    if "c" not in traced.ways:
        pytest.skip("the C module is not built here")
    for way in ("c", "python"):
        traced.reset()
        run = traced.run(way)
        with pytest.raises(TypeError, match="non-None"):
            run.send(1)
        with pytest.raises(ZeroDivisionError):
            run.throw(ZeroDivisionError("before"))
        assert traced.begun == [] and traced.closed == []
        run = traced.run(way)
        await run
        with pytest.raises(RuntimeError, match="cannot reuse already awaited"):
            await run
    traced.reset()
    run = traced.run("c")
    with pytest.raises(TypeError, match="deriving from BaseException"):
        run.throw("nope")
    with pytest.raises(TypeError, match="traceback"):
        run.throw(ValueError, None, "not a traceback")
    with pytest.raises(TypeError, match="separate value"):
        run.throw(ValueError("x"), 1)
    with pytest.raises(KeyError, match="k"):
        run.throw(KeyError, "k")
    telemetry = traced.telemetry

    def fails(*args: Any) -> Any:
        raise OSError("begin")

    telemetry._begin_request = fails
    for way in ("c", "python"):
        traced.reset()
        with pytest.raises(OSError, match="begin"):
            await traced.run(way)
        assert traced.closed == []


@pytest.mark.own_process
async def test_traced_runs_free_what_they_made() -> None:
    """2,000 C runs (answered, failed) leave no objects behind. (No access lines: their
    OTel records would wait in the log queue of a provider an earlier test set up.)"""
    import gc
    import tracemalloc

    from kiki_otel._settings import Settings

    quiet = Settings(http={"access_log": False})
    answers = _Traced(_TRACED_APPS["answers"], quiet)
    fails = _Traced(_TRACED_APPS["fails-first"], quiet)
    if "c" not in answers.ways:
        pytest.skip("the C module is not built here")

    async def runs(n: int) -> None:
        for _ in range(n):
            await answers.run("c")
            with pytest.raises(ValueError, match="first"):
                await fails.run("c")
            answers.reset(), fails.reset()

    await runs(200)
    gc.collect()
    trace_memory()
    before = tracemalloc.take_snapshot()
    await runs(2000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    # what the runs' code kept (not pytest's or asyncio's own bookkeeping)
    mine = [tracemalloc.Filter(True, p) for p in (__file__, "*/kiki_otel/*")]
    diff = after.filter_traces(mine).compare_to(before.filter_traces(mine), "lineno")
    grown = [s for s in diff if s.size_diff > 0]
    assert sum(s.size_diff for s in grown) < 64_000, [str(s) for s in grown[:8]]
