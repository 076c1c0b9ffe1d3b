"""The access line's direct path writes exactly what the structlog chain writes.

Both paths run with the same arguments, in the same context, at the same (frozen) clock:
the stdout lines must be byte-identical and the OTel records equal, field for field and in
order, for every shape of line (levels, missing route, client ids, bound context variables
that shadow the line's own keys, console format, no OTel logs). Which path a server takes
follows structlog's configuration.
"""

from __future__ import annotations

import collections
import contextvars
import json
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
from tests.conftest import Memory, trace_memory

NOW_NS = 1_790_000_000_123_456_789


@pytest.fixture(autouse=True, params=["c-access-line", "c-json-line", "orjson-line"])
def line_writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test with the whole line in C (``_speedups.access_line``, when built), with
    its Python twin writing the JSON in C, and with orjson alone."""
    if request.param == "orjson-line":
        monkeypatch.setattr(_access_log, "native_json_line", None)
    elif _access_log.native_json_line is None:
        pytest.skip("the C module is not built here")
    elif request.param == "c-json-line":
        monkeypatch.setattr(DirectAccessLog, "_native", lambda self: None)
    return str(request.param)


def _current() -> tuple[Any, ...] | None:
    """What the middleware passes with the line: the current context, its span's ids."""
    ctx = otel_context.get_current()
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        return None
    trace_id, span_id = span_context.trace_id, span_context.span_id
    ids = (f"{trace_id:032x}", f"{span_id:016x}")
    return (ctx, trace_id, span_id, span_context.trace_flags, span_context, ids)


def _log(log: DirectAccessLog | StructlogAccessLog, *args: Any) -> None:
    """A line, as the middleware logs it (its ``call``, with the current context's ids)."""
    log.call(*args, _current())


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)


def _configure(**overrides: Any) -> None:
    kiki_otel.configure(FastAPI(), service_name="svc-access", metrics_exporter="none", **overrides)


def _configure_queued(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> None:
    """kiki's own log exporter towards a dead port, its records left in the batch queue."""
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "600000")
    kiki_otel.configure(
        FastAPI(),
        service_name="svc-access",
        exporter_otlp_endpoint="http://127.0.0.1:9",
        metrics_exporter="none",
        exporter_otlp_timeout=100,
        **overrides,
    )


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


class _Text(str):
    """A str subclass: neither C writer takes it (its encoding is its own to say)."""


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
    pytest.param(  # the same without context variables: the C line's dict-free path
        ("GET", '/q"\u2028\x01', "/q", 200, 1e-05), {}, id="values-handed-back-unbound"
    ),
    pytest.param(("GET", _Text("/items/3"), "/items/{item_id}", 200, 1.25), {}, id="str-subclass"),
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
            _log(direct, *args)
            _log(chain, *args)
    finally:
        client_request_id.reset(token)
    # (split at "\n" only: U+2028 in a JSON string is a line break to str.splitlines)
    direct_line, chain_line = capsys.readouterr().out.rstrip("\n").split("\n")
    assert direct_line == chain_line
    assert '"event":"http.request"' in direct_line
    direct_record, chain_record = (_record(r) for r in memory.logs()[-2:])
    assert direct_record == chain_record
    assert direct_record[3] == "http.request"


def test_the_c_line_reads_a_clock_changed_after_it_read_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], in_a_request: SpanContext
) -> None:
    """The C line reads ``time.time_ns`` through a table of lookups that a change to the
    module's dict invalidates: a clock patched after lines were written, and one restored,
    are each the next line's."""
    _configure()
    direct = access_log()
    assert isinstance(direct, DirectAccessLog)

    def stamps() -> list[str]:
        capsys.readouterr()
        for _ in range(3):
            _log(direct, "GET", "/items/3", "/items/{item_id}", 200, 1.25)
        return [json.loads(line)["timestamp"] for line in capsys.readouterr().out.splitlines()]

    real = stamps()
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)
    frozen = stamps()
    monkeypatch.undo()
    again = stamps()
    assert len(set(frozen)) == 1 and frozen[0].startswith("20") and frozen[0] not in real + again
    assert real[0] <= again[0]


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
        _log(path, "GET", "/items/3", "/items/{item_id}", 200, 1.25)
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
            _log(path, "GET", "/x", "/x", status, 1.0)
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
        _log(direct, "GET", "/x", "/x", 200, 1.0)
        direct("GET", "/x", "/x", 200, 1.0)  # without the caller's ids: the cached hex ids
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f'"trace_id":"{0xABC:032x}","request_id":"{0xABC:032x}"' in line
        assert f'"span_id":"{0xDEF:016x}"' in line
    _log(direct, "GET", "/x", "/x", 200, 1.0)  # outside any span
    assert "trace_id" not in capsys.readouterr().out
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):
        request = _current()  # the middleware's, while the app leaves a span of its own current:
        with tracer.start_as_current_span("left-current"):
            direct.call("GET", "/x", "/x", 200, 1.0, request)
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
        direct.call("GET", "/x", "/x", 200, 1.0, request)
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
        _log(log, "GET", "/x", "/x", 200, 1.0)
    assert [(c["event"], c["status"], c["log_level"]) for c in captured] == [
        ("http.request", 200, "info")
    ]
    capsys.readouterr()
    _log(log, "GET", "/x", "/x", 200, 1.0)  # and direct again afterwards
    assert '"event":"http.request"' in capsys.readouterr().out


def test_the_middleware_calls_the_c_line_whose_twin_is_the_python_one(line_writer: str) -> None:
    _configure()
    direct = access_log()
    assert isinstance(direct, DirectAccessLog)
    if line_writer == "c-access-line":
        assert type(direct.call).__name__ == "AccessLine"
        assert direct.call.twin == direct.__call__  # type: ignore[attr-defined]
    else:
        assert direct.call == direct.__call__


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda log, args: log.call(*args), id="no-current"),
        pytest.param(lambda log, args: log.call(*args, None), id="current-none"),
        pytest.param(lambda log, args: log.call(*args, ("not", "it")), id="current-short"),
        pytest.param(lambda log, args: log.call(*args[:4], duration_ms=args[4]), id="keyword"),
    ],
)
def test_a_call_of_another_shape_writes_what_the_chain_writes(
    memory: Memory,
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    in_a_request: SpanContext,
    call: Any,
) -> None:
    _configure()
    direct, chain = access_log(), StructlogAccessLog()
    args = ("GET", "/items/3", "/items/{item_id}", 200, 1.25)
    capsys.readouterr()
    call(direct, args)
    chain(*args)
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and f'"span_id":"{in_a_request.span_id:016x}"' in first
    direct_record, chain_record = (_record(r) for r in memory.logs()[-2:])
    assert direct_record == chain_record


def test_a_bad_status_raises_as_the_twin_does(
    memory: Memory, capsys: pytest.CaptureFixture[str], in_a_request: SpanContext
) -> None:
    _configure()
    direct = access_log()
    capsys.readouterr()
    with pytest.raises(TypeError, match="'>=' not supported"):
        _log(direct, "GET", "/x", "/x", None, 1.0)
    assert capsys.readouterr().out == ""


@pytest.mark.own_process
def test_many_lines_keep_no_memory(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, in_a_request: SpanContext
) -> None:
    """Every object a line makes is freed (the C line's references counted right)."""
    import gc
    import os
    import sys
    import tracemalloc

    _configure(logs_exporter="none")
    direct = access_log()
    route, current = "/x", _current()
    before = sys.getrefcount(route), sys.getrefcount(current)
    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(sys, "stdout", sink)  # (a captured stdout keeps every line)
        for _ in range(2_000):  # warm: caches, the timestamp's second
            direct.call("GET", "/x", route, 200, 1.0, current)
        gc.collect()
        trace_memory()
        start = tracemalloc.take_snapshot()
        for _ in range(20_000):
            direct.call("GET", "/x", route, 200, 1.0, current)
        end = tracemalloc.take_snapshot()
    # what the line's code kept (not pytest's or the SDK's own bookkeeping)
    mine = [tracemalloc.Filter(True, p) for p in (__file__, "*/kiki_otel/*", "*/structlog/*")]
    diff = end.filter_traces(mine).compare_to(start.filter_traces(mine), "filename")
    grown = sum(d.size_diff for d in diff)
    assert grown < 20_000  # bytes: well under one per line
    assert (sys.getrefcount(route), sys.getrefcount(current)) == before


@pytest.mark.parametrize("case", ["trace-based-unsampled", "thread-busy", "first-on-a-thread"])
def test_the_record_goes_the_emitters_way_in_each_of_its_cases(
    memory: Memory,
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """The C line emits its record as ``OTelEmitter.emit_current`` would, or calls it."""
    import contextvars
    import threading

    from kiki_otel import _logging

    _configure(log_trace_based=case == "trace-based-unsampled")
    direct, chain = access_log(), StructlogAccessLog()
    args = ("GET", "/items/3", "/items/{item_id}", 200, 1.25)

    def both() -> None:
        _log(direct, *args)
        _log(chain, *args)

    span: Any = trace.get_tracer("test").start_span("request")
    if case == "trace-based-unsampled":
        span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(0)))
    capsys.readouterr()
    with trace.use_span(span, end_on_exit=True):
        if case == "thread-busy":  # a record logged while this thread emits one: not exported
            chain_installed = _logging.installed_chain()
            assert chain_installed is not None and chain_installed.emitter is not None
            local = chain_installed.emitter._local
            monkeypatch.setattr(local, "state", _logging._BUSY)
            both()
            local.state = _logging._IDLE
        elif case == "first-on-a-thread":
            thread = threading.Thread(target=contextvars.copy_context().run, args=(both,))
            thread.start()
            thread.join()
        else:
            both()
    first, second = capsys.readouterr().out.splitlines()
    assert first == second
    records = [_record(r) for r in memory.logs() if r.body == "http.request"]
    exported = case not in ("trace-based-unsampled", "thread-busy")
    assert len(records) == (2 if exported else 0)
    assert records[:1] == records[1:]


@pytest.mark.parametrize("bound", [{}, {"user": "u-1"}])
def test_the_line_is_the_event_the_emitters_method_was_given(
    memory: Memory,
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    in_a_request: SpanContext,
    bound: dict[str, Any],
) -> None:
    """When the record takes the emitter's method, the line renders the dict the method was
    given, as the twin does (also where the C line made no dict until then)."""
    from kiki_otel import _logging

    _configure()
    chain = _logging.installed_chain()
    assert chain is not None and chain.emitter is not None
    emitter = chain.emitter

    def marking(level: str, event: dict[str, Any], *rest: Any) -> None:
        event["seen_by"] = "emit_current"  # (kiki's own emitter changes nothing)

    monkeypatch.setattr(emitter, "emit_current", marking)
    monkeypatch.setattr(emitter._local, "state", _logging._BUSY)  # the method's case
    direct = access_log()
    assert isinstance(direct, DirectAccessLog)
    capsys.readouterr()
    with structlog.contextvars.bound_contextvars(**bound):
        _log(direct, "GET", "/items/3", "/items/{item_id}", 200, 1.25)
        direct.__call__("GET", "/items/3", "/items/{item_id}", 200, 1.25, _current())
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and first.endswith('"seen_by":"emit_current"}')


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("sampled", [True, False])
@pytest.mark.parametrize("trace_based", [False, True])
def test_the_record_queued_for_the_fast_exporter_is_the_twins(
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    sampled: bool,
    trace_based: bool,
) -> None:
    """With kiki's own exporter the record is encoded and queued on the request thread (by
    the C line in its own call): the same item as the Python twin's, byte for byte."""
    from opentelemetry import _logs

    _configure_queued(monkeypatch, log_trace_based=trace_based)
    provider: Any = _logs.get_logger_provider()
    queue = provider._multi_log_record_processor._log_record_processors[0]._batch_processor._queue
    direct = access_log()
    assert isinstance(direct, DirectAccessLog)
    args = ("GET", "/items/3", "/items/{item_id}", status, 1.25)
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    with trace.use_span(NonRecordingSpan(SpanContext(0xAB, 0xCD, False, flags))):
        _log(direct, *args)  # the emitter learns the logger and this thread
        queue.clear()
        _log(direct, *args)
        direct(*args, _current())  # the Python twin
        items = list(queue)
    capsys.readouterr()
    if trace_based and not sampled:
        assert items == []
        return
    assert len(items) == 2 and type(items[0]).__name__ == "Encoded"
    assert items[0] == items[1]
    assert b"http.request" in items[0].payload and (b"ERROR" in items[0].payload) == (status > 500)


@pytest.mark.parametrize("change", ["processor-added", "logger-disabled", "few-attributes"])
# (the SDK's warning is asserted in the test; its repeats after it are not the test's subject)
@pytest.mark.filterwarnings("ignore::opentelemetry.sdk._logs.LogRecordDroppedAttributesWarning")
def test_the_record_takes_the_sdks_way_when_the_direct_one_is_not_usable(
    frozen_clock: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    """The direct record's check (``DirectLogs.usable``, in C through ``DirectLogs.queue``
    for the C line): a processor added after setup, a logger turned off and an attribute
    limit below the line's fields each send the record the SDK's way (or nowhere), for the
    C line as for its twin."""
    import contextlib

    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LogRecordDroppedAttributesWarning
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )

    from kiki_otel import _logging

    if change == "few-attributes":
        monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "3")
    _configure_queued(monkeypatch)
    provider: Any = _logs.get_logger_provider()
    queue = provider._multi_log_record_processor._log_record_processors[0]._batch_processor._queue
    direct = access_log()
    assert isinstance(direct, DirectAccessLog)
    args = ("GET", "/items/3", "/items/{item_id}", 200, 1.25)
    added = InMemoryLogRecordExporter()
    dropped = (
        pytest.warns(LogRecordDroppedAttributesWarning)  # the SDK's, for the fields it cut
        if change == "few-attributes"
        else contextlib.nullcontext()
    )
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(1)))
    with dropped, trace.use_span(span):
        _log(direct, *args)  # the emitter learns the logger and this thread
        if change == "processor-added":
            provider.add_log_record_processor(SimpleLogRecordProcessor(added))
        elif change == "logger-disabled":
            chain = _logging.installed_chain()
            assert chain is not None and chain.emitter is not None
            logger, _ = chain.emitter._loggers["kiki_otel.access"]
            logger._logger_config = type(logger._logger_config)(is_enabled=False)
        queue.clear()
        _log(direct, *args)
        direct(*args, _current())  # the Python twin
        items = list(queue)
    capsys.readouterr()
    if change == "logger-disabled":
        assert items == []
        return
    assert len(items) == 2 and not any(type(item).__name__ == "Encoded" for item in items)
    attributes = [dict(item.log_record.attributes) for item in items]
    assert attributes[0] == attributes[1]
    if change == "processor-added":
        assert len(added.get_finished_logs()) == 2 and "path" in attributes[0]
    else:
        assert len(attributes[0]) == 3


def _merge_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(bound in structlog's context variables, the event before the merge)."""
    return [
        ({}, {"event": "x"}),
        ({"user": "u-1", "n": 3}, {"event": "x"}),
        ({"user": "u-1", "event": "bound", "": "empty-key"}, {"event": "x", "user": None}),
        ({"a": [1], "b": None, "c": ...}, {}),
    ]


@pytest.mark.parametrize(("bound", "event"), _merge_cases())
def test_the_c_merge_of_context_variables_is_structlogs(
    bound: dict[str, Any], event: dict[str, Any]
) -> None:
    native = _access_log.merge_contextvars()
    if native is structlog.contextvars.merge_contextvars:
        pytest.skip("the C module is not built here")

    def merged(merge: Any, mapping: Any) -> Any:
        def run() -> Any:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(gone="unbound", **bound)
            structlog.contextvars.unbind_contextvars("gone")  # left as Ellipsis
            # names structlog's prefix does not start, whatever their values
            contextvars.ContextVar("structlog").set("no")
            contextvars.ContextVar("xstructlog_no").set("no")
            result = merge(None, "info", mapping)
            assert result is mapping
            return list(mapping.items())

        return contextvars.Context().run(run)

    assert merged(native, dict(event)) == merged(
        structlog.contextvars.merge_contextvars, dict(event)
    )
    assert merged(native, _Mapping(event)) == merged(
        structlog.contextvars.merge_contextvars, _Mapping(event)
    )


class _Mapping(collections.UserDict[str, Any]):
    """An event dict that is no dict (a processor may hand one on)."""


def test_the_c_merge_raises_what_structlogs_raises() -> None:
    native = _access_log.merge_contextvars()
    if native is structlog.contextvars.merge_contextvars:
        pytest.skip("the C module is not built here")

    def run(merge: Any) -> str:
        structlog.contextvars.bind_contextvars(user="u-1")
        with pytest.raises(AttributeError) as raised:
            merge(None, "info", ("not", "a", "mapping"))
        return str(raised.value)

    assert contextvars.Context().run(run, native) == contextvars.Context().run(
        run, structlog.contextvars.merge_contextvars
    )
    with pytest.raises(TypeError, match="merge_contextvars"):
        native(None, {})


def test_another_structlog_prefix_keeps_structlogs_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "other_")
    assert _access_log.merge_contextvars() is structlog.contextvars.merge_contextvars
