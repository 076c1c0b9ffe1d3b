"""The log chain: one processor chain for structlog and stdlib, JSON to stdout and OTel records
with the same fields, correlation by span-context validity, no recursion from exporters."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import kiki_otel
from kiki_otel._logging import OTelEmitter
from tests.conftest import Memory


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]


def test_json_line_fields(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """A structlog event renders as one JSON line with ISO-8601 UTC time, level, logger,
    service and the bound fields."""
    kiki_otel.configure(service_name="svc-log")
    capsys.readouterr()
    kiki_otel.get_logger("orders").info("order.placed", order_id=42, tags=["a", "b"])
    (line,) = lines(capsys)
    assert line["event"] == "order.placed" and line["order_id"] == 42
    assert line["level"] == "info" and line["logger"] == "orders"
    assert line["service"] == "svc-log"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_get_logger_before_configure_is_safe(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module-level ``log = get_logger()`` made before configure() uses the final chain."""
    log = kiki_otel.get_logger("early")
    kiki_otel.configure(service_name="svc-early")
    capsys.readouterr()
    log.info("hello")
    (line,) = lines(capsys)
    assert line["service"] == "svc-early" and line["logger"] == "early"


def test_correlation_uses_validity_not_sampling(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-recording span (sampled=0) still puts its ids on the line."""
    kiki_otel.configure()
    capsys.readouterr()
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(ctx)):
        kiki_otel.get_logger().info("inside")
    kiki_otel.get_logger().info("outside")
    inside, outside = lines(capsys)
    assert inside["trace_id"] == f"{0xABC:032x}" == inside["request_id"]
    assert inside["span_id"] == f"{0xDEF:016x}"
    assert "trace_id" not in outside


def test_stdlib_logs_share_the_chain_and_outputs(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """logging.getLogger(...) records get the same JSON shape, extras and OTel export."""
    kiki_otel.configure(service_name="svc-std")
    capsys.readouterr()
    tracer = trace.get_tracer("t")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("legacy.module").warning("disk %s%% full", 91, extra={"disk": "/var"})
    (line,) = lines(capsys)
    assert line["event"] == "disk 91% full" and line["level"] == "warning"
    assert line["logger"] == "legacy.module" and line["disk"] == "/var"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    (record,) = [r for r in memory.logs() if r.body == "disk 91% full"]
    assert record.severity_text == "WARN"
    assert record.attributes["disk"] == "/var"
    assert record.trace_id == span.get_span_context().trace_id


def test_otel_record_carries_structured_attributes(memory: Memory) -> None:
    """The OTel log record has the event as body and the fields as typed attributes."""
    kiki_otel.configure()
    kiki_otel.get_logger("pay").info("charge", amount=12.5, ok=True, items=[1, 2], meta={"k": "v"})
    (record,) = [r for r in memory.logs() if r.body == "charge"]
    attrs = dict(record.attributes)
    assert attrs["amount"] == 12.5 and attrs["ok"] is True
    assert list(attrs["items"]) == [1, 2]
    assert json.loads(attrs["meta"]) == {"k": "v"}
    assert attrs["logger"] == "pay"


def test_exception_is_structured(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """log.exception() gives exception.type/message/stacktrace in JSON and OTel semconv keys."""
    kiki_otel.configure()
    capsys.readouterr()
    try:
        raise ValueError("bad plan")
    except ValueError:
        kiki_otel.get_logger().exception("plan.failed")
    (line,) = lines(capsys)
    assert line["exception"]["type"] == "ValueError"
    assert line["exception"]["message"] == "bad plan"
    assert "Traceback" in line["exception"]["stacktrace"]
    (record,) = [r for r in memory.logs() if r.body == "plan.failed"]
    assert record.attributes["exception.type"] == "ValueError"
    assert record.severity_text == "ERROR"


def test_exporter_logs_never_reenter_otel(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SDK's own loggers (and SDK worker threads) print to stdout but are not exported."""
    kiki_otel.configure()
    capsys.readouterr()
    logging.getLogger("opentelemetry.exporter.otlp").warning("collector unreachable")
    assert lines(capsys)[0]["event"] == "collector unreachable"
    assert not [r for r in memory.logs() if r.body == "collector unreachable"]


def test_level_filters_both_paths(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """KIKI_OTEL_LOG_LEVEL filters structlog and stdlib alike."""
    kiki_otel.configure(log_level="WARNING")
    capsys.readouterr()
    kiki_otel.get_logger().info("quiet")
    logging.getLogger("x").info("quiet too")
    kiki_otel.get_logger().warning("loud")
    assert [l["event"] for l in lines(capsys)] == ["loud"]


def test_uvicorn_handlers_are_routed_not_duplicated(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn's own handlers are removed (it installs them before importing the app), its
    records flow through our chain once, and its access log is off (ours replaces it)."""
    error_logger = logging.getLogger("uvicorn.error")
    error_logger.addHandler(logging.StreamHandler())
    error_logger.propagate = False
    kiki_otel.configure()
    capsys.readouterr()
    error_logger.info("Started server process")
    logging.getLogger("uvicorn.access").info("GET / 200")
    out = lines(capsys)
    assert [l["event"] for l in out] == ["Started server process"]


@pytest.fixture
def server_access_logger() -> Iterator[logging.Logger]:
    """uvicorn's access logger, restored afterwards (loggers are process-wide)."""
    named = logging.getLogger("uvicorn.access")
    saved = (list(named.handlers), named.propagate, named.disabled)
    yield named
    named.handlers, named.propagate, named.disabled = saved


@pytest.mark.parametrize(
    ("uvicorn_handler", "ours"),
    [
        pytest.param(True, True, id="ours-replaces-uvicorns"),
        pytest.param(False, False, id="no-access-log-and-ours-off"),
    ],
)
def test_server_access_log_stays_off(
    memory: Memory,
    capsys: pytest.CaptureFixture[str],
    server_access_logger: logging.Logger,
    uvicorn_handler: bool,
    ours: bool,
) -> None:
    """uvicorn's access logger as uvicorn leaves it (its handler, or none under
    ``--no-access-log``; no propagation) stays off when kiki's line replaces it, and when
    both are off: no access line at all, not uvicorn's brought back through the chain.
    Off is no handlers anywhere up its chain: uvicorn checks ``hasHandlers()`` per
    connection and then skips building its line (client address, quoted path)."""
    server_access_logger.handlers = []
    if uvicorn_handler:
        server_access_logger.addHandler(logging.StreamHandler(io.StringIO()))
    server_access_logger.propagate = False
    kiki_otel.configure(http={"access_log": ours})
    capsys.readouterr()
    assert not server_access_logger.hasHandlers()
    server_access_logger.info("GET / 200")
    assert lines(capsys) == []


def test_server_access_log_routed_when_ours_is_off(
    memory: Memory, capsys: pytest.CaptureFixture[str], server_access_logger: logging.Logger
) -> None:
    """uvicorn's access log on (its handler) and kiki's off: uvicorn's line goes through the
    JSON chain once, and not through uvicorn's own handler."""
    own = io.StringIO()
    server_access_logger.addHandler(logging.StreamHandler(own))
    server_access_logger.propagate = False
    kiki_otel.configure(http={"access_log": False})
    capsys.readouterr()
    server_access_logger.info("GET / 200")
    assert [(l["logger"], l["event"]) for l in lines(capsys)] == [("uvicorn.access", "GET / 200")]
    assert own.getvalue() == ""


def test_console_format_for_developers(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """log_format=console renders human-readable lines, still with ids."""
    kiki_otel.configure(log_format="console")
    capsys.readouterr()
    with trace.get_tracer("t").start_as_current_span("s"):
        kiki_otel.get_logger().info("hello.console", user="ann")
    out = capsys.readouterr().out
    assert "hello.console" in out and "user" in out and "trace_id" in out
    assert not out.startswith("{")


def test_exporter_retry_warnings_are_rate_limited(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead collector's retry warnings print once per interval per logger, not per retry;
    other loggers are never held back."""
    kiki_otel.configure()
    capsys.readouterr()
    exporter = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    for i in range(50):
        exporter.warning("Transient error, retrying %d", i)
        logging.getLogger("app").warning("app warning %d", i)
    out = lines(capsys)
    assert [l["event"] for l in out if l["logger"].startswith("opentelemetry")] == [
        "Transient error, retrying 0"
    ]
    assert len([l for l in out if l["logger"] == "app"]) == 50


def test_a_logger_that_keeps_warning_is_heard_less_and_less() -> None:
    """The SDK's metrics exporter warns on every export (each minute) while the collector is
    down: one line per minute for as long as that lasts. Kept warning, a logger's interval
    doubles up to the longest; quiet for longer than its interval, it starts over."""
    from kiki_otel._logging import ExporterNoiseFilter

    now = [0.0]
    noise = ExporterNoiseFilter(interval=30.0, longest=600.0, clock=lambda: now[0])

    def record(name: str = "opentelemetry.exporter.otlp.proto.http.metric_exporter") -> Any:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, "Transient error", None, None)

    heard = []
    for minute in range(60):  # an hour of a warning a minute
        now[0] = minute * 60.0
        if noise.filter(record()):
            heard.append(minute)
    assert heard == [0, 1, 2, 4, 8, 16, 26, 36, 46, 56]  # 30, 60, 120, ... s, then 600 s
    assert noise.filter(record("app")) and noise.filter(record("app"))  # others: never held
    now[0] = 56 * 60.0 + 600 + 601  # quiet for longer than its 600 s past its allowed time
    again = record()
    assert noise.filter(again) and again.suppressed == 3  # minutes 57-59, held back
    now[0] += 29
    assert not noise.filter(record())  # from 30 s again, not 600
    now[0] += 1
    last = record()
    assert noise.filter(last) and last.suppressed == 1


def test_uvicorn_color_message_is_dropped(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn's ANSI-coloured duplicate (extra color_message) never reaches the JSON line."""
    kiki_otel.configure()
    capsys.readouterr()
    logging.getLogger("uvicorn.error").info("Started %s", "x", extra={"color_message": "\x1b[36mx"})
    (line,) = lines(capsys)
    assert "color_message" not in line and line["event"] == "Started x"


def test_a_stdlib_message_loses_its_trailing_newline(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn ends "Exception in ASGI application\\n" with a newline for its text log: the
    JSON line's event and the OTel record's body end without it; other whitespace stays."""
    kiki_otel.configure()
    capsys.readouterr()
    logging.getLogger("uvicorn.error").error("Exception in ASGI application\n")
    logging.getLogger("app").info("  spaced  ")
    logging.getLogger("app").info("two\nlines\r\n\n")
    assert [line["event"] for line in lines(capsys)] == [
        "Exception in ASGI application",
        "  spaced  ",
        "two\nlines",
    ]
    bodies = [record.body for record in memory.logs()]
    assert bodies[-3:] == ["Exception in ASGI application", "  spaced  ", "two\nlines"]


def test_logger_used_before_configure_follows_later_config(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module logger that logged before configure() (import-time line) still uses our chain
    afterwards, and structlog.testing.capture_logs() still sees it after configure()."""
    import structlog

    log = kiki_otel.get_logger("import.time")
    log.info("before.configure")
    kiki_otel.configure(service_name="svc-late")
    capsys.readouterr()
    log.info("after.configure")
    (line,) = lines(capsys)
    assert line["service"] == "svc-late"
    with structlog.testing.capture_logs() as captured:
        log.info("captured")
    assert [e["event"] for e in captured] == ["captured"]


class _BrokenPipe(io.RawIOBase):
    """A stdout whose reader has gone: every write fails as a closed pipe does, until
    ``mended`` (the buffer above it flushes what it kept when it is collected, and since
    3.13 a failure there is reported as an unraisable exception)."""

    mended = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.mended:
            return len(data)
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("writer", ["c", "python"])
@pytest.mark.parametrize("failure", ["broken-pipe", "closed"])
def test_failing_stdout_drops_lines_not_records(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, failure: str, writer: str
) -> None:
    """A stdout that fails (its reader gone, or closed) never raises into the code that
    logs, structlog and stdlib alike; the OTel records still go out, and the interpreter's
    stderr gets one notice per outage, with the count. The C write as its twin."""
    from kiki_otel import _logging

    if writer == "python":
        monkeypatch.setattr(_logging, "speedups", None)
    elif getattr(_logging.speedups, "output_write", None) is None:
        pytest.skip("the C module is not built here")
    kiki_otel.configure(service_name="svc-pipe")
    pipe = _BrokenPipe()
    stdout = io.TextIOWrapper(io.BufferedWriter(pipe), write_through=True)
    if failure == "closed":
        stdout = io.TextIOWrapper(io.BytesIO())
        stdout.close()
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "__stderr__", stderr)
    log = kiki_otel.get_logger("pipe")
    log.info("first")
    log.info("second")
    logging.getLogger("lib").warning("third")
    bodies = [r.body for r in memory.logs() if r.body in ("first", "second", "third")]
    assert bodies == ["first", "second", "third"]
    error = "BrokenPipeError" if failure == "broken-pipe" else "ValueError"
    assert stderr.getvalue().count(f"kiki_otel: stdout write failed ({error}") == 1
    assert "(1 so far)" in stderr.getvalue()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), write_through=True))
    log.info("recovered")  # a good write ends the outage: the next failure is reported again
    monkeypatch.setattr(sys, "stdout", stdout)
    log.info("fourth")
    assert stderr.getvalue().count("kiki_otel: stdout write failed") == 2
    assert "(4 so far)" in stderr.getvalue()
    pipe.mended = True


@pytest.mark.parametrize("writer", ["c", "python"])
def test_a_line_follows_what_was_written_to_stdouts_text_layer(
    monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """Text still buffered in stdout's text layer goes out before the line (both ways:
    bytes to the binary buffer, a str to the text layer); the lock is free afterwards."""
    import threading

    from kiki_otel import _logging

    if writer == "python":
        monkeypatch.setattr(_logging, "speedups", None)
    elif getattr(_logging.speedups, "output_write", None) is None:
        pytest.skip("the C module is not built here")
    output = _logging._Output()
    assert (type(output.write).__name__ == "OutputWrite") == (writer == "c")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, write_through=False))
    sys.stdout.write("print()ed, still buffered\n")
    output.write(b'{"event":"bytes"}')
    sys.stdout.write("again ")
    output.write('{"event":"str"}')
    output.write(b"")
    assert (
        raw.getvalue() == b'print()ed, still buffered\n{"event":"bytes"}\nagain {"event":"str"}\n\n'
    )
    free: list[bool] = []
    thread = threading.Thread(target=lambda: free.append(output._lock.acquire(blocking=False)))
    thread.start()
    thread.join()
    assert free == [True] and output.dropped == 0


def _file_stdout(fd: int, layer: str = "buffered") -> io.TextIOWrapper:
    """A stdout as Python opens one: a text layer over a buffer over a FileIO of fd, or
    (unbuffered: ``-u``, PYTHONUNBUFFERED=1) a write-through text layer over the FileIO."""
    raw = io.FileIO(fd, "w", closefd=False)
    if layer == "unbuffered":
        return io.TextIOWrapper(raw, write_through=True)
    if layer == "text-buffered":  # unbuffered below, but text held until a flush
        return io.TextIOWrapper(raw, write_through=False)
    return io.TextIOWrapper(io.BufferedWriter(raw))


def _output(monkeypatch: pytest.MonkeyPatch, writer: str) -> Any:
    """kiki's stdout output with the C write ("c", skipped without the C module) or the
    Python one ("python")."""
    from kiki_otel import _logging

    if writer == "python":
        monkeypatch.setattr(_logging, "speedups", None)
    elif getattr(_logging.speedups, "output_write", None) is None:
        pytest.skip("the C module is not built here")
    return _logging._Output()


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.mark.parametrize("layer", ["buffered", "unbuffered", "text-buffered"])
@pytest.mark.parametrize("writer", ["c", "python"])
def test_a_line_to_a_file_descriptor_is_the_buffers_write(
    monkeypatch: pytest.MonkeyPatch, writer: str, layer: str
) -> None:
    """Over a FileIO the C write writes the line to the descriptor itself (no buffer calls):
    the same bytes, in the same order with the text layer, as the buffer's write and flush;
    a reader gone is a dropped line, reported, as before."""
    output = _output(monkeypatch, writer)
    read_end, write_end = os.pipe()
    stdout = _file_stdout(write_end, layer)
    try:
        os.set_blocking(read_end, False)
        monkeypatch.setattr(sys, "stdout", stdout)
        sys.stdout.write("print()ed, still buffered\n")
        output.write(b'{"event":"one"}')
        output.write(b'{"event":"two"}')
        assert _drain(read_end) == b'print()ed, still buffered\n{"event":"one"}\n{"event":"two"}\n'
        os.close(read_end)
        read_end = -1
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "__stderr__", stderr)
        output.write(b'{"event":"lost"}')  # EPIPE (Python ignores SIGPIPE)
        assert output.dropped == 1 and "BrokenPipeError" in stderr.getvalue()
    finally:
        # closed now: a buffer still holding the lost line (the Python write's) would be
        # flushed at collection, to a closed descriptor (an error at teardown on 3.13)
        with contextlib.suppress(OSError):
            stdout.close()
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def _full_pipe_writes(
    monkeypatch: pytest.MonkeyPatch, output: Any, layer: str
) -> tuple[bytes, int, str]:
    """A line larger than the room left in a non-blocking stdout's full pipe, then a
    line after the pipe is read: what arrives, and the lines counted as dropped."""
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        while True:  # fill the pipe
            try:
                os.write(write_end, b"f" * 4096)
            except BlockingIOError:
                break
        received = os.read(read_end, 8192)  # two pages of the pipe's ring free
        monkeypatch.setattr(sys, "stdout", _file_stdout(write_end, layer))
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "__stderr__", stderr)
        output.write(b'{"event":"' + b"x" * 12000 + b'"}')  # a short write, then EAGAIN
        received += _drain(read_end)
        output.write(b'{"event":"next"}')
        received += _drain(read_end)
        return received, output.dropped, stderr.getvalue()
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("layer", ["buffered", "unbuffered"])
@pytest.mark.parametrize("writer", ["c", "python"])
def test_a_closed_stdout_drops_the_line(
    monkeypatch: pytest.MonkeyPatch, writer: str, layer: str
) -> None:
    """A stdout whose file was closed (after a line went out: the C write knows its
    descriptor) drops the line with the text layer's ValueError, and writes nothing to
    the descriptor, which may be another file's by then."""
    output = _output(monkeypatch, writer)
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(read_end, False)
        stdout = _file_stdout(write_end, layer)
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "__stderr__", io.StringIO())
        output.write(b'{"event":"one"}')
        stdout.close()  # (closefd=False: the pipe stays open)
        output.write(b'{"event":"two"}')
        assert output.dropped == 1 and "ValueError" in sys.__stderr__.getvalue()
        assert _drain(read_end) == b'{"event":"one"}\n'
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("layer", ["buffered", "unbuffered"])
def test_a_full_non_blocking_stdout_loses_what_the_buffers_write_loses(
    monkeypatch: pytest.MonkeyPatch, layer: str
) -> None:
    """A non-blocking stdout whose pipe is full: the C write, after its short write, hands
    what is left to the binary layer's write and flush, so what arrives, what is counted
    dropped and what is reported are the Python write's, byte for byte."""
    from kiki_otel import _logging

    if getattr(_logging.speedups, "output_write", None) is None:
        pytest.skip("the C module is not built here")
    native = _logging._Output()
    monkeypatch.setattr(_logging, "speedups", None)
    python = _logging._Output()
    assert type(native.write).__name__ == "OutputWrite" and native.write != python.write
    received, dropped, report = _full_pipe_writes(monkeypatch, native, layer)
    assert (received, dropped, report) == _full_pipe_writes(monkeypatch, python, layer)
    assert received.endswith(b'{"event":"next"}\n')
    if layer == "buffered":  # what was left of the line fit in the buffer, reported
        big = b'{"event":"' + b"x" * 12000 + b'"}\n'
        assert dropped == 1 and received.endswith(big + b'{"event":"next"}\n')
        assert "BlockingIOError" in report
    else:  # a FileIO drops what a non-blocking write could not take, unreported, as ever
        assert dropped == 0 and report == "" and b"x" * 4000 in received


def test_values_orjson_refuses_are_logged_not_raised(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An int beyond 64 bits, non-str dict keys, non-finite floats: the log call does not
    raise, the JSON line keeps every field (keys as strs, NaN/inf as null like orjson),
    and the OTel record carries them as attributes (big ints as strs: OTLP ints are 64-bit)."""
    kiki_otel.configure(service_name="svc-odd")
    capsys.readouterr()
    big = 1 << 70
    log = kiki_otel.get_logger("odd")
    log.info("big", n=big, ok=1)
    log.info("keys", d={1: "a", (1, 2): "b"}, nan={"x": float("nan")})
    log.info("list", values=[big, 2])
    out = lines(capsys)
    assert [line["event"] for line in out] == ["big", "keys", "list"]
    assert out[0]["n"] == big and out[0]["ok"] == 1
    assert out[1]["d"] == {"1": "a", "(1, 2)": "b"} and out[1]["nan"] == {"x": None}
    assert out[2]["values"] == [big, 2]
    records = {r.body: dict(r.attributes or {}) for r in memory.logs()}
    assert records["big"]["n"] == str(big) and records["big"]["ok"] == 1
    assert json.loads(records["keys"]["d"]) == {"1": "a", "(1, 2)": "b"}
    assert json.loads(records["list"]["values"]) == [big, 2]


def test_values_that_cannot_be_shown_never_raise(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lone surrogate (from a JSON body), an object whose repr raises (a detached ORM
    instance), a self-referential dict, a stdlib ``extra`` with an int key: every log call
    returns, every line is valid JSON with what could be shown, every record goes out."""

    class Detached:
        def __repr__(self) -> str:
            raise RuntimeError("DetachedInstanceError")

    loop: dict[str, Any] = {}
    loop["self"] = loop
    kiki_otel.configure(service_name="svc-odd")
    capsys.readouterr()
    log = kiki_otel.get_logger("odd")
    log.info("surrogate", name="\ud800")
    log.info("repr", obj=Detached())
    log.info("cycle", v=loop)
    logging.getLogger("lib").warning("created %s", "\ud800", extra={1: "a"})
    out = lines(capsys)
    assert [line["event"] for line in out] == ["surrogate", "repr", "cycle", "created \ud800"]
    assert out[0]["name"] == "\ud800"  # escaped in the JSON text, the same str read back
    assert out[1]["obj"] == "<unprintable Detached>"
    assert out[2]["v"] == {"self": "<recursion>"}
    assert out[3]["1"] == "a"
    bodies = [r.body for r in memory.logs() if not str(r.body).startswith("kiki_otel.")]
    assert bodies == ["surrogate", "repr", "cycle", "created \ud800"]


def test_a_log_line_from_inside_a_write_does_not_deadlock(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler that logs can run while the same thread is inside the stdout
    write (holding its lock): the nested line is written, nothing hangs."""
    import threading

    kiki_otel.configure(service_name="svc-reentrant")
    log = kiki_otel.get_logger("reentrant")
    written: list[bytes] = []

    class Interrupted(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            if not written:
                written.append(b"")
                log.info("from.handler")  # what a signal handler would do here
            written.append(bytes(data))
            return len(data)

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(Interrupted(), write_through=True))
    done = threading.Event()

    def run() -> None:
        log.info("outer")
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(5), "deadlocked on the output lock"
    text = b"".join(written)
    assert b'"event":"from.handler"' in text and b'"event":"outer"' in text


def test_the_emitter_keeps_a_bounded_number_of_logger_names(memory: Memory) -> None:
    """A logger name per tenant or per id must not grow the emitter's cache without end;
    records of names past the bound still go out."""
    import structlog

    from kiki_otel import _logging

    kiki_otel.configure(service_name="svc-names")
    for i in range(_logging._LOGGERS_MAX + 50):
        kiki_otel.get_logger(f"tenant.{i}").info("hello")
    emitter = next(
        p for p in structlog.get_config()["processors"] if isinstance(p, _logging.OTelEmitter)
    )
    assert len(emitter._loggers) <= _logging._LOGGERS_MAX
    names = {
        data.instrumentation_scope.name
        for data in memory.log_exporter.get_finished_logs()
        if data.log_record.body == "hello"
    }
    assert f"tenant.{_logging._LOGGERS_MAX + 49}" in names


def test_own_lines_never_raise_and_keep_the_handled_exception(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """kiki's own lines through a chain that raises: on stderr as JSON, with both errors."""
    import structlog

    from kiki_otel._logging import OwnLogger

    kiki_otel.configure(service_name="svc", metrics_exporter="none", logs_exporter="none")
    log = OwnLogger("kiki_otel.test")
    log.info("fine.before", n=1)

    def broken(_logger: Any, _method: str, _event: Any) -> Any:
        raise ValueError("processor down")

    structlog.configure(processors=[broken])
    log.warning("report", count=2)
    try:
        raise KeyError("the real problem")
    except KeyError:
        log.exception("cleanup.failed", cleanup="close_db")
    out, err = capfd.readouterr()
    assert json.loads(out.splitlines()[-1])["event"] == "fine.before"
    warning, failed = (json.loads(line) for line in err.splitlines())
    assert warning == {
        "count": 2,
        "event": "report",
        "logger": "kiki_otel.test",
        "level": "warning",
        "logging_failed": "ValueError('processor down')",
    }
    assert failed["level"] == "error" and failed["cleanup"] == "close_db"
    assert failed["exception"] == "KeyError('the real problem')"


def test_console_format_renders_exceptions_with_their_traceback(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console renderer gets the traceback text (the JSON line and the OTel record keep
    the structured fields): ``log.exception`` in console format used to raise TypeError."""
    kiki_otel.configure(service_name="svc", metrics_exporter="none", log_format="console")
    log = kiki_otel.get_logger("test.console")
    try:
        raise ValueError("bad input")
    except ValueError:
        log.exception("import.failed", file="a.csv")
    out = capsys.readouterr().out
    assert "import.failed" in out and "file" in out
    assert "Traceback (most recent call last)" in out and "ValueError: bad input" in out
    (record,) = [r for r in memory.logs() if r.body == "import.failed"]
    assert record.attributes["exception.type"] == "ValueError"
    assert "ValueError: bad input" in record.attributes["exception.stacktrace"]


def test_otel_attributes_carry_the_text_the_line_shows(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A UUID, a datetime, a Decimal, bytes, an object with ``__structlog__``: the OTel
    attribute is the text the JSON line shows, not a JSON document with its quotes (a search
    for user_id=<uuid> must find the record); a mapping stays JSON text."""
    import datetime
    import decimal
    import uuid

    class Money:
        def __structlog__(self) -> str:
            return "EUR 19.99"

    kiki_otel.configure(service_name="svc", metrics_exporter="none")
    fields: dict[str, Any] = {
        "user_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "amount": decimal.Decimal("19.99"),
        "raw": b"\x00ab",
        "price": Money(),
        "cart": {"items": 2, "ids": [1, 2]},
    }
    capsys.readouterr()
    kiki_otel.get_logger("test.types").info("order.created", **fields)
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    (record,) = [r for r in memory.logs() if r.body == "order.created"]
    for key in ("user_id", "at", "amount", "raw", "price"):
        assert record.attributes[key] == line[key], key
    assert record.attributes["user_id"] == "12345678-1234-5678-1234-567812345678"
    assert json.loads(record.attributes["cart"]) == line["cart"] == {"items": 2, "ids": [1, 2]}


def _direct_emitter(**options: Any) -> tuple[OTelEmitter, Any]:
    """An emitter whose records take the direct path into a fast exporter's queue (kept:
    the collector is a closed port and the batch waits ten minutes)."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    from kiki_otel._otlp_http import FastLogExporter, OTLPHttpClient
    from tests.support.server_process import free_port

    provider = LoggerProvider(shutdown_on_exit=False)
    client = OTLPHttpClient(f"http://127.0.0.1:{free_port()}/v1/logs", timeout=0.1)
    processor = BatchLogRecordProcessor(FastLogExporter(client), schedule_delay_millis=600_000)
    provider.add_log_record_processor(processor)
    return OTelEmitter(provider, **options), processor._batch_processor._queue


ACCESS_EVENT = {
    "method": "GET",
    "path": "/items/7",
    "route": "/items/{item_id}",
    "status": 200,
    "duration_ms": 0.25,
    "event": "http.request",
    "logger": "kiki_otel.access",
    "level": "info",
    "timestamp": "2026-01-01T00:00:00Z",
    "trace_id": "000000000000000000000000000000ab",
    "request_id": "000000000000000000000000000000ab",
    "span_id": "00000000000000cd",
    "service": "svc",
}


_NOW = ("kiki_otel.access", 1_790_000_000_123_456_789)
"""emit_current's logger name and time: the access line's, and the clock the tests fix."""


@pytest.mark.parametrize("trace_based", [False, True])
@pytest.mark.parametrize("sampled", [True, False])
def test_emit_current_queues_what_the_emitter_queues(
    monkeypatch: pytest.MonkeyPatch, trace_based: bool, sampled: bool
) -> None:
    """The access line's entry into the emitter queues the very bytes a call of the emitter
    does, without going through the call once the logger is known; under trace-based
    logs an unsampled request's record is skipped by both."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000_123_456_789)
    emitter, queue = _direct_emitter(trace_based=trace_based)
    calls: list[str] = []
    real_call = OTelEmitter.__call__

    def counted(self: OTelEmitter, logger: Any, method: str, event: Any) -> Any:
        calls.append(method)
        return real_call(self, logger, method, event)

    monkeypatch.setattr(OTelEmitter, "__call__", counted)
    span_context = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(int(sampled)))
    emitter(None, "info", {**ACCESS_EVENT, "event": "startup"})  # finds the logger's path
    queue.clear()
    error_event = {**ACCESS_EVENT, "level": "error"}
    with trace.use_span(NonRecordingSpan(span_context)):
        emitter.emit_current("info", dict(ACCESS_EVENT), span_context, *_NOW)
        emitter.emit_current("error", dict(error_event), span_context, *_NOW)
        emitter(None, "info", dict(ACCESS_EVENT))
        emitter(None, "error", dict(error_event))
    assert calls == ["info", "info", "error"]  # emit_current never needed the call
    payloads = [item.payload for item in reversed(queue)]
    if trace_based and not sampled:
        assert payloads == []
    else:
        assert len(payloads) == 4 and payloads[:2] == payloads[2:] and payloads[0] != payloads[1]


def test_emit_current_stamps_the_record_with_the_lines_time() -> None:
    """The access line reads the clock once: its record carries that reading, not another."""
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    emitter, queue = _direct_emitter()
    span_context = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1))
    emitter.emit_current("info", dict(ACCESS_EVENT), span_context, *_NOW)  # learns the logger
    queue.clear()
    emitter.emit_current("info", dict(ACCESS_EVENT), span_context, "kiki_otel.access", 12345)
    (item,) = queue
    record = LogRecord.FromString(item.payload)
    assert record.time_unix_nano == 12345
    assert record.span_id == (0xCD).to_bytes(8, "big")


@pytest.mark.parametrize("level", ["info", "error"])
@pytest.mark.parametrize("flags", [0, 1])
def test_emit_current_with_a_head_queues_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, level: str, flags: int
) -> None:
    """Given the record's head, the record is encoded in one C call: the same bytes as the
    encoder's own path; a field it cannot take goes the emitter's call (its own clock
    read, fixed here), with or without the head."""
    monkeypatch.setattr(time, "time_ns", lambda: _NOW[1])
    emitter, queue = _direct_emitter()
    span_context = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(flags))
    emitter.emit_current(level, dict(ACCESS_EVENT), span_context, *_NOW)  # learns the logger
    queue.clear()
    head = emitter.record_head(level, str(ACCESS_EVENT["event"]))
    for event in [dict(ACCESS_EVENT), {**ACCESS_EVENT, "tags": ["a", "b"], "big": 1 << 70}]:
        emitter.emit_current(level, dict(event), span_context, *_NOW)
        emitter.emit_current(level, dict(event), span_context, *_NOW, head)
        without, with_head = (item.payload for item in reversed(queue))
        assert with_head == without
        queue.clear()


def test_emit_current_steps_aside_as_the_emitter_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before its logger is known, on an SDK worker thread, and past the attribute count
    limit, the record takes the emitter's call (which skips or converts it)."""
    emitter, queue = _direct_emitter()
    span_context = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1))
    emitter.emit_current("info", dict(ACCESS_EVENT), span_context, *_NOW)  # learns the logger
    assert len(queue) == 1
    on_worker: list[int] = []

    def worker() -> None:
        emitter.emit_current("info", dict(ACCESS_EVENT), span_context, *_NOW)
        on_worker.append(len(queue))

    thread = threading.Thread(target=worker, name="OtelBatchLogRecordProcessor")
    thread.start()
    thread.join()
    assert on_worker == [1]  # an exporter thread's records are never exported
    direct = emitter._loggers["kiki_otel.access"][1]
    assert direct is not None
    monkeypatch.setattr(direct, "_limit", 3)  # as built under LogRecordLimits(max_attributes=3)
    emitter.emit_current("info", dict(ACCESS_EVENT), span_context, *_NOW)
    assert len(queue) == 2 and type(queue[0]).__name__ != "Encoded"  # the SDK's record


def test_a_server_logger_a_config_disabled_stays_disabled(memory: Memory) -> None:
    """A logging config with ``disable_existing_loggers`` may have disabled uvicorn.error:
    kiki routes its records, and leaves that decision alone."""
    error_logger = logging.getLogger("uvicorn.error")
    try:
        error_logger.disabled = True
        kiki_otel.configure()
        assert error_logger.disabled and error_logger.propagate
    finally:
        error_logger.disabled = False


def test_iso_timestamp_is_datetimes_isoformat() -> None:
    """The line's ``timestamp`` is ``datetime.fromtimestamp(t, UTC).isoformat()`` with ``Z``
    (structlog's ``TimeStamper(fmt="iso", utc=True)``), to the microsecond, floor-rounded:
    every microsecond digit, no fraction at .000000, across second and day boundaries."""
    import random
    from datetime import UTC, datetime

    from kiki_otel._logging import iso_timestamp, iso_timestamp_py

    rng = random.Random(5)
    base = 1_795_000_000 * 10**9  # 2026
    stamps = [base + micros * 1000 + rng.randrange(1000) for micros in (0, 1, 9, 10, 999_999)]
    stamps += [base - 1, base + 86_399 * 10**9 + 999_999_999, 0, 1, 999, 1000]
    stamps += [rng.randrange(0, 4 * 10**18) for _ in range(5000)]
    stamps += [(1 << 63) - 1, -1, -(10**9) - 1]  # the C range's ends; before 1970: fallback
    for stamp in stamps + sorted(stamps):  # sorted: the same second again, cached
        seconds, nanos = divmod(stamp, 10**9)
        when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
        expected = when.isoformat().replace("+00:00", "Z")
        assert iso_timestamp(stamp, iso_timestamp_py) == expected, stamp
        assert iso_timestamp_py(stamp) == expected, stamp
    if iso_timestamp is not iso_timestamp_py:  # in C: beyond its range, the fallback's text
        assert iso_timestamp(1 << 64, lambda t: f"fallback {t}") == f"fallback {1 << 64}"


# ------------------------------------------- a call's fields that clash with the line's own


def test_stdlib_extra_never_rewrites_the_lines_own_fields(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """``extra`` named like the line's own fields (level, timestamp, logger, service, event)
    is kept under ``extra_<name>``: the level and OTel severity stay the call's (an error
    is no DEBUG), the time and names stay kiki's."""
    from datetime import datetime

    kiki_otel.configure(service_name="svc-own")
    capsys.readouterr()
    orders = logging.getLogger("orders")
    orders.error("order failed", extra={"level": "debug", "timestamp": datetime(2019, 5, 1)})
    orders.info("x", extra={"logger": "fake", "service": "mine", "event": "e", "span_id": 7})
    first, second = lines(capsys)
    assert first["level"] == "error" and first["extra_level"] == "debug"
    assert first["timestamp"].startswith("20") and not first["timestamp"].startswith("2019")
    assert first["extra_timestamp"] == "2019-05-01T00:00:00"
    assert (second["logger"], second["service"], second["event"]) == ("orders", "svc-own", "x")
    assert (second["extra_logger"], second["extra_service"], second["extra_event"]) == (
        "fake",
        "mine",
        "e",
    )
    assert second["extra_span_id"] == 7 and "span_id" not in second
    failed, other = [r for r in memory.logs() if r.body in ("order failed", "x")]
    assert failed.severity_text == "ERROR" and failed.attributes["extra_level"] == "debug"
    assert other.attributes["logger"] == "orders" and other.attributes["extra_logger"] == "fake"


def test_structlog_fields_named_like_the_lines_own_are_kept_aside(
    memory: Memory, capsys: pytest.CaptureFixture[str]
) -> None:
    """structlog keywords and bound fields of those names are kept the same way, not
    silently dropped (timestamp, level, trace ids) nor allowed to win (logger, service);
    a field already named ``extra_<name>`` pushes the moved one one prefix further."""
    kiki_otel.configure(service_name="svc-own")
    capsys.readouterr()
    log = kiki_otel.get_logger("orders").bind(service="mine")
    with trace.get_tracer("t").start_as_current_span("work") as span:
        log.warning("order.late", timestamp="2019-05-01", level="L2", request_id="legacy-1")
    log.info("again", logger="fake", level="a", extra_level="b")
    late, again = lines(capsys)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert (late["level"], late["logger"], late["service"]) == ("warning", "orders", "svc-own")
    assert late["request_id"] == trace_id and late["extra_request_id"] == "legacy-1"
    assert (late["extra_timestamp"], late["extra_level"], late["extra_service"]) == (
        "2019-05-01",
        "L2",
        "mine",
    )
    assert late["timestamp"] != "2019-05-01"
    assert (again["logger"], again["extra_logger"], again["level"]) == ("orders", "fake", "info")
    assert (again["extra_level"], again["extra_extra_level"]) == ("b", "a")
    (record,) = [r for r in memory.logs() if r.body == "order.late"]
    assert record.severity_text == "WARN" and record.attributes["extra_level"] == "L2"


def test_a_custom_stdlib_levels_severity_is_its_standard_band(memory: Memory) -> None:
    """A level between the standard ones is exported with the severity of the band it falls
    in (the level number decides, not its name)."""
    kiki_otel.configure()
    logging.getLogger("custom").log(45, "worse than an error")
    logging.getLogger("custom").log(35, "worse than a warning")
    severities = {r.body: r.severity_text for r in memory.logs() if r.body.startswith("worse")}
    assert severities == {"worse than an error": "ERROR", "worse than a warning": "WARN"}


# ------------------------------------------- a logging configuration made after configure()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Undo what a test's own logging config does to the process's loggers."""
    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = dict(logging.root.manager.loggerDict)
    disabled = {n: l.disabled for n, l in loggers.items() if isinstance(l, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in disabled.items():
            logging.getLogger(name).disabled = was
        for name in set(logging.root.manager.loggerDict) - set(loggers):
            logging.getLogger(name).disabled = False
        structlog.reset_defaults()


def _replaced_warnings(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [l for l in lines(capsys) if l["event"] == "kiki_otel.logging_replaced"]


async def _lifespan(app: Any, *, shutdown: bool) -> None:
    """Run the app's lifespan startup (and shutdown), as a server does."""
    import asyncio

    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
            if shutdown:
                await queue.put({"type": "lifespan.shutdown"})

    task = asyncio.ensure_future(app({"type": "lifespan", "state": {}}, queue.get, send))
    await started.wait()
    if shutdown:
        await task
    else:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_a_structlog_configure_after_configure_is_named_once_at_startup(
    memory: Memory, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """A team's own structlog.configure() run after configure() replaces kiki's chain: the
    lifespan's start says so once (as JSON and an OTel record, through kiki's own chain),
    with what to do; it is not re-installed over, and shutdown does not repeat it."""
    import structlog
    from fastapi import FastAPI

    app = FastAPI()
    kiki_otel.configure(app)
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    capsys.readouterr()
    await _lifespan(app, shutdown=True)
    (warning,) = _replaced_warnings(capsys)
    assert warning["level"] == "warning" and warning["replaced"] == ["structlog.configure()"]
    assert "remove it" in warning["hint"] and "trace_id" in warning["hint"]
    assert structlog.get_config()["processors"][0].__class__.__name__ == "JSONRenderer"
    (record,) = [r for r in memory.logs() if r.body == "kiki_otel.logging_replaced"]
    assert record.severity_text == "WARN"


async def test_a_dict_config_after_configure_is_named_once(
    memory: Memory, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """dictConfig (Alembic's fileConfig) after configure() replaces the root handler and
    disables the loggers that exist: one warning names both, the disabled loggers and the
    hint; the user's handler stays."""
    import logging.config

    from fastapi import FastAPI

    app = FastAPI()
    for name in ("app.module", "uvicorn.error"):  # existing when the config runs
        logging.getLogger(name)
    kiki_otel.configure(app)
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config = {"version": 1, "handlers": {"h": handler}, "root": {"handlers": ["h"]}}
    logging.config.dictConfig(config)
    capsys.readouterr()
    await _lifespan(app, shutdown=True)
    (warning,) = _replaced_warnings(capsys)
    assert warning["replaced"] == ["root handler", "disabled loggers"]
    assert "app.module" in warning["disabled_loggers"]
    assert "uvicorn.error" in warning["disabled_loggers"]
    assert "disable_existing_loggers=False" in warning["hint"]
    assert "before kiki_otel.configure()" in warning["hint"]
    assert type(logging.getLogger().handlers[0]) is logging.StreamHandler
    assert [r for r in memory.logs() if r.body == "kiki_otel.logging_replaced"]


def test_a_script_hears_of_a_replaced_config_at_shutdown(
    memory: Memory, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """Without a lifespan (a script, a worker), shutdown names it before its report."""
    logging.getLogger().handlers.clear()
    telemetry = kiki_otel.configure()
    logging.basicConfig(force=True)
    capsys.readouterr()
    telemetry.shutdown()
    events = [l["event"] for l in lines(capsys)]
    assert events[:2] == ["kiki_otel.logging_replaced", "shutdown.started"]


async def test_configs_that_keep_kikis_chain_warn_nothing(
    memory: Memory, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """What leaves the chain working is no replacement: uvicorn's own dictConfig (from
    ``uvicorn.run(app)``), structlog's capture_logs(), a config's loggers disabled before
    configure(), a structlog.configure() of the level alone."""
    import logging.config

    import structlog
    import uvicorn.config
    from fastapi import FastAPI

    app = FastAPI()
    logging.getLogger("old.quiet").disabled = True
    kiki_otel.configure(app)
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    capsys.readouterr()
    with structlog.testing.capture_logs():
        await _lifespan(app, shutdown=False)
    await _lifespan(app, shutdown=True)
    assert _replaced_warnings(capsys) == []


# ------------------------------------------------------------------ uncaught exceptions


def test_an_uncaught_exception_is_logged_then_the_previous_hook_runs(
    memory: Memory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.excepthook: an error line with the traceback (JSON and OTel record), then the
    hook installed before configure(); Ctrl-C keeps Python's behaviour (no line); reset()
    puts the previous hook back."""
    seen: list[type[BaseException]] = []
    previous = lambda kind, error, tb: seen.append(kind)  # noqa: E731
    monkeypatch.setattr(sys, "excepthook", previous)
    kiki_otel.configure()
    capsys.readouterr()
    try:
        raise RuntimeError("worker crashed: db gone")
    except RuntimeError as error:
        sys.excepthook(RuntimeError, error, error.__traceback__)
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    (line,) = lines(capsys)
    assert line["event"] == "uncaught_exception" and line["level"] == "error"
    assert line["exception"]["message"] == "worker crashed: db gone"
    assert "Traceback" in line["exception"]["stacktrace"]
    assert seen == [RuntimeError, KeyboardInterrupt]
    (record,) = [r for r in memory.logs() if r.body == "uncaught_exception"]
    assert record.severity_text == "ERROR" and record.attributes["exception.type"] == "RuntimeError"
    from kiki_otel import testing

    testing.reset()
    assert sys.excepthook is previous


def test_an_exception_that_ends_a_thread_is_logged_with_the_threads_name(
    memory: Memory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """threading.excepthook likewise (the previous one still runs); SystemExit ends a
    thread quietly, as it does without kiki."""
    seen: list[Any] = []
    previous = seen.append
    monkeypatch.setattr(threading, "excepthook", previous)
    kiki_otel.configure()
    capsys.readouterr()

    def fails() -> None:
        raise ValueError("bad job")

    def exits() -> None:
        raise SystemExit(3)

    for target, name in ((fails, "job-runner"), (exits, "exiter")):
        thread = threading.Thread(target=target, name=name)
        thread.start()
        thread.join()
    (line,) = lines(capsys)
    assert line["event"] == "uncaught_exception" and line["thread.name"] == "job-runner"
    assert line["exception"]["type"] == "ValueError"
    assert [args.exc_type for args in seen] == [ValueError, SystemExit]
    from kiki_otel import testing

    testing.reset()
    assert threading.excepthook is previous
