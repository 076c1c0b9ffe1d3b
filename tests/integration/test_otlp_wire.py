"""The demo service under a real uvicorn, exporting over real OTLP (http/protobuf and gRPC)
to a receiver that decodes the wire format: ids, logs, metrics and propagation end to end."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.integration

FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_BLRP_SCHEDULE_DELAY": "100",
    "OTEL_METRIC_EXPORT_INTERVAL": "300",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


def demo_env(rx: OTLPReceiver, protocol: str, name: str, **extra: str) -> dict[str, str]:
    endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
    return {
        "OTEL_SERVICE_NAME": name,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        **FAST_EXPORT,
        **extra,
    }


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_request_id_span_logs_and_metrics_agree(receiver: OTLPReceiver, protocol: str) -> None:
    """X-Request-ID == the exported server span's trace id == trace_id in the stdout JSON
    lines and in the exported OTel log records; stable HTTP metrics arrive; one server span."""
    service = f"demo-{protocol.replace('/', '-')}"
    with ServerProcess(env=demo_env(receiver, protocol, service)) as server:
        server.wait_ready()
        response = httpx.get(server.url + "/plans/5")
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32 and int(request_id, 16)
        assert response.json()["request_id"] == request_id

        spans = receiver.wait_for_spans(1, trace_id=request_id)
        server_spans = [s for s in spans if s.kind == "SERVER"]
        assert len(server_spans) == 1, [s.name for s in spans]
        span = server_spans[0]
        assert span.name == "GET /plans/{plan_id}"
        assert span.protocol == ("grpc" if protocol == "grpc" else "http")
        assert span.resource["service.name"] == service
        assert span.attributes["http.response.status_code"] == 200

        records = receiver.wait_for_logs(2, trace_id=request_id)
        events = {str(r.body): r for r in records}
        assert {"plan.loaded", "http.request"} <= set(events)
        assert events["plan.loaded"].span_id == span.span_id
        assert events["plan.loaded"].attributes["plan_id"] == 5
        assert events["plan.loaded"].severity_text == "INFO"

        lines = [l for l in server.json_lines() if l.get("trace_id") == request_id]
        by_event = {l["event"]: l for l in lines}
        assert by_event["plan.loaded"]["span_id"] == span.span_id
        assert by_event["plan.loaded"]["request_id"] == request_id
        assert by_event["http.request"]["status"] == 200
        assert by_event["plan.loaded"]["service"] == service

        points = receiver.wait_for(
            lambda: [
                m
                for m in receiver.metrics("http.server.request.duration")
                if m.resource.get("service.name") == service
                and m.attributes.get("http.route") == "/plans/{plan_id}"
            ]
        )
        assert points[-1].unit == "s" and points[-1].kind == "histogram"
        assert points[-1].explicit_bounds[0] == 0.005
        assert receiver.wait_for(
            lambda: [
                m
                for m in receiver.metrics("http.server.active_requests")
                if m.resource.get("service.name") == service
            ]
        )


def test_propagation_through_a_second_service_keeps_one_trace(receiver: OTLPReceiver) -> None:
    """Service A calls B over httpx: both services' spans share A's trace id (= request id)."""
    with ServerProcess(env=demo_env(receiver, "http/protobuf", "demo-b")) as b:
        b.wait_ready()
        env_a = demo_env(receiver, "http/protobuf", "demo-a", DEMO_DOWNSTREAM_URL=b.url)
        with ServerProcess(env=env_a) as a:
            a.wait_ready()
            response = httpx.get(a.url + "/plans/3")
            assert response.json()["value"] == 30
            request_id = response.headers["x-request-id"]

            def both_services() -> list[ReceivedSpan]:
                # A's CLIENT span ends (and may be exported) before A's SERVER span: wait for
                # both SERVER spans and the CLIENT span, not just two service names.
                found = receiver.spans(trace_id=request_id)
                servers = {s.resource["service.name"] for s in found if s.kind == "SERVER"}
                has_client = any(s.kind == "CLIENT" for s in found)
                return found if servers >= {"demo-a", "demo-b"} and has_client else []

            spans = receiver.wait_for(both_services)
            services = {s.resource["service.name"]: s for s in spans if s.kind == "SERVER"}
            assert set(services) == {"demo-a", "demo-b"}
            client = next(s for s in spans if s.kind == "CLIENT")
            assert services["demo-b"].parent_span_id == client.span_id
            assert client.parent_span_id == services["demo-a"].span_id
            b_lines = [l for l in b.json_lines() if l.get("event") == "plan.valued"]
            assert b_lines and b_lines[-1]["request_id"] == request_id


def test_unhandled_error_is_a_500_with_id_error_span_and_log(receiver: OTLPReceiver) -> None:
    """/boom: 500 with X-Request-ID; the span is ERROR with an exception event; the access
    log line is error level; uvicorn's traceback goes through the same JSON chain, with the
    request's ids on the line and on its OTel record (uvicorn logs it after the request)."""
    with ServerProcess(env=demo_env(receiver, "http/protobuf", "demo-boom")) as server:
        server.wait_ready()
        response = httpx.get(server.url + "/boom")
        assert response.status_code == 500
        request_id = response.headers["x-request-id"]
        (span,) = [s for s in receiver.wait_for_spans(1, trace_id=request_id) if s.kind == "SERVER"]
        assert span.status_code == "ERROR"
        assert span.attributes["error.type"] == "RuntimeError"
        assert any(e.name == "exception" for e in span.events)
        records = receiver.wait_for_logs(1, trace_id=request_id)
        access = [r for r in records if r.body == "http.request"]
        assert access and access[0].severity_text == "ERROR"
        errors = server.wait_for_json(  # (uvicorn logs it after the response)
            lambda l: l.get("logger", "").startswith("uvicorn") and l.get("level") == "error"
        )
        assert errors[-1]["exception"]["type"] == "RuntimeError"
        assert errors[-1]["request_id"] == errors[-1]["trace_id"] == request_id
        traceback_records = [
            r for r in receiver.wait_for_logs(2, trace_id=request_id) if r.body != "http.request"
        ]
        assert [r.scope_name for r in traceback_records] == [errors[-1]["logger"]]
        assert traceback_records[0].attributes["exception.type"] == "RuntimeError"


def test_bad_incoming_headers_over_real_http(receiver: OTLPReceiver) -> None:
    """Malformed traceparent -> new trace; a non-allowlisted X-Request-ID is dropped with an
    escaped warning; a valid legacy id is kept as client_request_id."""
    with ServerProcess(env=demo_env(receiver, "http/protobuf", "demo-bad")) as server:
        server.wait_ready()
        bad = httpx.get(server.url + "/plans/1", headers={"traceparent": "00-zz-1-01"})
        assert bad.status_code == 200 and len(bad.headers["x-request-id"]) == 32
        hostile = httpx.get(
            server.url + "/plans/1", headers={"X-Request-ID": "<script>alert(1)</script>"}
        )
        legacy = httpx.get(server.url + "/plans/1", headers={"X-Request-ID": "legacy-42"})
        receiver.wait_for_spans(1, trace_id=legacy.headers["x-request-id"])
        lines = server.json_lines()
        rejected = [l for l in lines if l.get("event") == "http.client_request_id.rejected"]
        assert len(rejected) == 1 and "<script>" in rejected[0]["value"]
        hostile_lines = [l for l in lines if l.get("trace_id") == hostile.headers["x-request-id"]]
        assert hostile_lines and not any("client_request_id" in l for l in hostile_lines)
        legacy_lines = [
            l
            for l in lines
            if l.get("event") == "plan.loaded"
            and l.get("trace_id") == legacy.headers["x-request-id"]
        ]
        assert legacy_lines[0]["client_request_id"] == "legacy-42"


def test_raw_hostile_header_bytes_do_not_break_the_server(receiver: OTLPReceiver) -> None:
    """Raw hostile header bytes (NUL, ESC, 1 MB): either the HTTP parser refuses them (4xx or
    closed connection) or they reach us and are dropped (our own id, no client_request_id);
    the server keeps serving and the next request still gets an id."""
    with ServerProcess(env=demo_env(receiver, "http/protobuf", "demo-raw")) as server:
        server.wait_ready()
        for value in (b"a\x00b", b"\x1b[31mred", b"x" * 1_000_000):
            reply = b""
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                try:
                    sock.sendall(
                        b"GET /plans/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: "
                        + value
                        + b"\r\nConnection: close\r\n\r\n"
                    )
                    reply = sock.recv(400)
                except (ConnectionResetError, BrokenPipeError):
                    pass
            if reply.startswith(b"HTTP/1.1 200"):
                match = re.search(rb"x-request-id: ([0-9a-f]{32})\r\n", reply)
                assert match, reply
                request_id = match.group(1).decode()
                receiver.wait_for_spans(1, trace_id=request_id)
                lines = [l for l in server.json_lines() if l.get("trace_id") == request_id]
                assert lines and not any("client_request_id" in l for l in lines)
            else:
                assert reply.startswith(b"HTTP/1.1 4") or reply == b"", reply
        assert len(httpx.get(server.url + "/plans/1").headers["x-request-id"]) == 32


def test_starts_and_serves_with_no_collector() -> None:
    """With nothing listening at the endpoint the service starts, serves and logs JSON."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {"OTEL_SERVICE_NAME": "demo-dead", "OTEL_EXPORTER_OTLP_ENDPOINT": dead, **FAST_EXPORT}
    with ServerProcess(env=env) as server:
        server.wait_ready()
        for _ in range(5):
            assert httpx.get(server.url + "/plans/2").status_code == 200
        assert any(l.get("event") == "plan.loaded" for l in server.json_lines())
