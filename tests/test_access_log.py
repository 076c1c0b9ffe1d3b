"""The access line's direct path writes exactly what the structlog chain writes.

Both paths run with the same arguments, in the same context, at the same (frozen) clock:
the stdout lines must be byte-identical and the OTel records equal, field for field and in
order, for every shape of line (levels, missing route, client ids, bound context variables
that shadow the line's own keys, console format, no OTel logs). Which path a server takes
follows structlog's configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import kiki_otel
from kiki_otel import _access_log
from kiki_otel._access_log import DirectAccessLog, StructlogAccessLog, access_log
from kiki_otel._context import client_request_id
from tests.conftest import Memory

NOW_NS = 1_790_000_000_123_456_789


@pytest.fixture(autouse=True, params=["c-line", "orjson-line"])
def line_writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with the line's JSON written in C (when built) and by orjson alone."""
    if request.param == "orjson-line":
        monkeypatch.setattr(_access_log, "native_json_line", None)
    elif _access_log.native_json_line is None:
        pytest.skip("the C module is not built here")


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)


def _configure(**overrides: Any) -> None:
    kiki_otel.configure(FastAPI(), service_name="svc-access", metrics_exporter="none", **overrides)


def _record(data: Any) -> tuple[Any, ...]:
    record = data
    return (
        record.timestamp,
        record.severity_number,
        record.severity_text,
        record.body,
        list(dict(record.attributes).items()),
        record.trace_id,
        record.span_id,
    )


@pytest.fixture
def in_a_request() -> Iterator[SpanContext]:
    """A current request span, as when the middleware logs (the SDK's, sampled)."""
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("GET /items/{item_id}") as span:
        yield span.get_span_context()


CASES = [
    pytest.param(("GET", "/items/3", "/items/{item_id}", 200, 1.25), {}, id="info"),
    pytest.param(("POST", "/boom", "/boom", 500, 0.5), {}, id="error"),
    pytest.param(("GET", "/nope", None, 404, 0.001), {}, id="no-route"),
    pytest.param((None, "/", None, 0, 0.0), {}, id="no-method-no-status"),
    pytest.param(
        ("GET", "/items/3", "/items/{item_id}", 200, 1.25),
        {"user": "u-1", "path": "/shadowed", "trace_id": "forged", "service": "other"},
        id="context-vars-shadowing-own-keys",
    ),
    pytest.param(
        ("GET", "/items/3", "/items/{item_id}", 200, 1.25),
        {"exc_info": False, "level": "debug", "client_request_id": "bound"},
        id="context-vars-exc-info-level-client-id",
    ),
    pytest.param(  # values the C line leaves to orjson and the stdlib, the record to Python
        ("GET", '/q"\u2028\x01', "/q", 200, 1e-05),
        {"ratio": 1e20, "tags": ["a", "b"], "big": 1 << 70, "nan": float("nan"), "k\x7f": "é"},
        id="values-the-c-line-hands-back",
    ),
]


@pytest.mark.parametrize(("args", "bound"), CASES)
@pytest.mark.parametrize("client_id", [None, "legacy-42"])
def test_direct_line_and_record_equal_the_chains(
    memory: Memory,
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str | None, str, str | None, int, float],
    bound: dict[str, Any],
    client_id: str | None,
) -> None:
    _configure()
    direct, chain = access_log(), StructlogAccessLog()
    assert isinstance(direct, DirectAccessLog)
    assert direct._json_line is _access_log.native_json_line  # the writer under test
    tracer = trace.get_tracer("test")
    token = client_request_id.set(client_id)
    try:
        with (
            tracer.start_as_current_span("request"),
            structlog.contextvars.bound_contextvars(**bound),
        ):
            capsys.readouterr()
            direct(*args)
            chain(*args)
    finally:
        client_request_id.reset(token)
    direct_line, chain_line = capsys.readouterr().out.splitlines()
    assert direct_line == chain_line
    assert '"event":"http.request"' in direct_line
    direct_record, chain_record = (_record(r) for r in memory.logs()[-2:])
    assert direct_record == chain_record
    assert direct_record[3] == "http.request"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"log_format": "console"}, id="console"),
        pytest.param({"logs_exporter": "none"}, id="no-otel-logs"),
        pytest.param({"log_trace_based": True}, id="trace-based"),
    ],
)
def test_other_chains_write_the_same_too(
    memory: Memory,
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    in_a_request: SpanContext,
    overrides: dict[str, Any],
) -> None:
    _configure(**overrides)
    direct, chain = access_log(), StructlogAccessLog()
    assert isinstance(direct, DirectAccessLog)
    capsys.readouterr()
    for path in (direct, chain):
        path("GET", "/items/3", "/items/{item_id}", 200, 1.25)
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and "http.request" in first
    records = [_record(r) for r in memory.logs() if r.body == "http.request"]
    assert len(records) == (0 if overrides.get("logs_exporter") == "none" else 2)
    assert records[:1] == records[1:]


@pytest.mark.parametrize(
    ("level", "logged"), [("WARNING", [500]), ("ERROR", [500]), ("CRITICAL", [])]
)
def test_the_level_filters_both_paths_alike(
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    in_a_request: SpanContext,
    level: str,
    logged: list[int],
) -> None:
    _configure(log_level=level)
    for path in (access_log(), StructlogAccessLog()):
        capsys.readouterr()
        for status in (200, 404, 500):
            path("GET", "/x", "/x", status, 1.0)
        statuses = [line for line in capsys.readouterr().out.splitlines() if "http.request" in line]
        assert [int(s.split('"status":')[1].split(",")[0]) for s in statuses] == logged


def test_the_ids_are_the_current_span_contexts(
    memory: Memory, frozen_clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unsampled, or no SDK (a random non-recording context): the ids are still there; a
    span the app left current gives the line and the record its ids, on both paths alike."""
    _configure()
    direct, chain = access_log(), StructlogAccessLog()
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(unsampled)):
        capsys.readouterr()
        direct("GET", "/x", "/x", 200, 1.0)
        direct("GET", "/x", "/x", 200, 1.0)  # the cached hex ids
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f'"trace_id":"{0xABC:032x}","request_id":"{0xABC:032x}"' in line
        assert f'"span_id":"{0xDEF:016x}"' in line
    direct("GET", "/x", "/x", 200, 1.0)  # outside any span
    assert "trace_id" not in capsys.readouterr().out
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"), tracer.start_as_current_span("left-current"):
        direct("GET", "/x", "/x", 200, 1.0)
        chain("GET", "/x", "/x", 200, 1.0)
        current = trace.get_current_span().get_span_context()
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and f'"span_id":"{current.span_id:016x}"' in first
    direct_record, chain_record = (_record(r) for r in memory.logs()[-2:])
    assert direct_record == chain_record and direct_record[6] == current.span_id
    # Something that is not a span under the span key: no ids, as get_current_span says
    from kiki_otel._context import SPAN_KEY

    assert SPAN_KEY is not None
    token = otel_context.attach(otel_context.set_value(SPAN_KEY, "not a span"))
    try:
        direct("GET", "/x", "/x", 200, 1.0)
        chain("GET", "/x", "/x", 200, 1.0)
    finally:
        otel_context.detach(token)
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and "trace_id" not in first
    direct_record, chain_record = (_record(r) for r in memory.logs()[-2:])
    assert direct_record == chain_record and direct_record[6] == 0


def test_a_thread_local_context_class_keeps_the_structlog_path(memory: Memory) -> None:
    """A bound logger starts from its context class's content (structlog's deprecated
    thread-local dicts): the direct line, built from an empty dict, would miss it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from structlog.threadlocal import wrap_dict

        structlog.configure(context_class=wrap_dict(dict))
    _configure()
    assert isinstance(access_log(), StructlogAccessLog)


def test_the_direct_path_only_while_kikis_chain_is_configured(memory: Memory) -> None:
    assert isinstance(access_log(), StructlogAccessLog)  # nothing configured yet
    _configure()
    assert isinstance(access_log(), DirectAccessLog)
    with structlog.testing.capture_logs():
        assert isinstance(access_log(), StructlogAccessLog)
    assert isinstance(access_log(), DirectAccessLog)
    # A user's own level (same processors) or own output (same level): structlog decides.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(10))
    assert isinstance(access_log(), StructlogAccessLog)
    _configure()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory())
    assert isinstance(access_log(), StructlogAccessLog)


def test_a_user_chain_gets_the_line_through_structlog(
    memory: Memory, capsys: pytest.CaptureFixture[str], in_a_request: SpanContext
) -> None:
    _configure()
    structlog.configure(
        processors=[
            lambda _logger, _method, event: {**event, "added_by_user": True},
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(),
    )
    log = _access_log.access_log()
    capsys.readouterr()
    log("GET", "/x", "/x", 200, 1.0)
    assert '"added_by_user": true' in capsys.readouterr().out


def test_no_chain_no_direct_path() -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        DirectAccessLog()


def test_capture_logs_begun_later_still_gets_the_line(
    memory: Memory, capsys: pytest.CaptureFixture[str], in_a_request: SpanContext
) -> None:
    """A server built before the test's ``capture_logs()`` (its processors swapped in place)."""
    _configure()
    log = access_log()
    assert isinstance(log, DirectAccessLog)
    with structlog.testing.capture_logs() as captured:
        log("GET", "/x", "/x", 200, 1.0)
    assert [(c["event"], c["status"], c["log_level"]) for c in captured] == [
        ("http.request", 200, "info")
    ]
    capsys.readouterr()
    log("GET", "/x", "/x", 200, 1.0)  # and direct again afterwards
    assert '"event":"http.request"' in capsys.readouterr().out
