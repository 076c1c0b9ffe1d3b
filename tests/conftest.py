"""Test isolation: no inherited OTEL_*/KIKI_OTEL_* variables, no stray ``.env``, and a fresh
``configure()`` for every test (OpenTelemetry globals are set-once per process otherwise).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiki_otel import testing

REPO = Path(__file__).resolve().parent.parent

# Real Redis, PostgreSQL and HTTP dependencies (started on demand, on free ports).
pytest_plugins = ["tests.support.services"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts with a clean environment and cwd, and ends with kiki-otel reset;
    the process's counts of dropped and lost export items start at zero."""
    from kiki_otel import _otlp_http

    for name in list(os.environ):
        if name.startswith(("OTEL_", "KIKI_OTEL_", "DEMO_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_otlp_http, "_dropped", {})
    monkeypatch.setattr(_otlp_http, "_lost", {})
    yield
    testing.reset(timeout=1.0)


class Memory:
    """In-memory SDK pipelines installed as the global providers, for fast unit tests.

    ``configure()`` joins providers that are already set, so tests can inspect exactly what
    kiki-otel emits; the real OTLP path is proven by the integration tests.
    """

    def __init__(self) -> None:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.span_exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        trace.set_tracer_provider(tracer_provider)
        self.reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.log_exporter = InMemoryLogRecordExporter()
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))
        _logs.set_logger_provider(logger_provider)

    def spans(self) -> list:  # type: ignore[type-arg]
        return list(self.span_exporter.get_finished_spans())

    def logs(self) -> list:  # type: ignore[type-arg]
        return [data.log_record for data in self.log_exporter.get_finished_logs()]

    def metric_points(self, name: str) -> list:  # type: ignore[type-arg]
        return metric_points(self.reader, name)


def metric_points(reader: Any, name: str) -> list[Any]:
    """Every data point of metric ``name`` an in-memory reader collects now."""
    data = reader.get_metrics_data()
    points = []
    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A real OTLP receiver (HTTP and gRPC) on free ports, for one test."""
    from tests.support.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        yield rx


@pytest.fixture
def memory() -> Memory:
    """Global in-memory trace/metric/log pipelines that ``configure()`` will join."""
    return Memory()


class HeaderSink:
    """A real HTTP server on 127.0.0.1 that answers 204 and records each request's headers."""

    def __init__(self) -> None:
        import threading
        from email.message import Message
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[Message] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                sink.requests.append(self.headers)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def header_sink() -> Iterator[HeaderSink]:
    """A downstream HTTP service that records the headers our outgoing calls carry."""
    sink = HeaderSink()
    yield sink
    sink.close()


def layer_of(entry: Any) -> Any:
    """The kiki layer a middleware-stack entry runs: the owner of its bound ``_dispatch``,
    also through a C dispatch (whose ``twin`` that is); anything else is itself."""
    entry = getattr(entry, "twin", entry)
    return getattr(entry, "__self__", entry)


def trace_memory() -> None:
    """tracemalloc on, for a memory test's snapshots: only in a test's own process.

    A memory test runs in a process of its own (``@pytest.mark.own_process``), where no
    other test's thread runs: tracing the whole run slows it twice over, and
    ``tracemalloc.stop()`` mid-run races a thread that allocates without holding the GIL
    (zlib, in an OTLP receiver's or an exporter's thread) and can crash CPython 3.11
    (python/cpython#128679; fixed in 3.12 and 3.13 only). The child's exit ends the tracing.
    """
    assert os.environ.get(_OWN_PROCESS), "mark the test @pytest.mark.own_process"
    tracemalloc.start()


# The environment the run began with: the child of an own_process test gets it, not the
# test's (``_isolated`` has removed OTEL_*/KIKI_OTEL_* by then, KIKI_OTEL_NO_SPEEDUPS too).
_ENVIRON = dict(os.environ)
_OWN_PROCESS = "KIKI_TEST_OWN_PROCESS"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An ``own_process`` test runs as ``python -m pytest NODEID`` in a fresh process;
    its result (passed, skipped, failed with its output) is this test's."""
    nodeid = pyfuncitem.nodeid
    if pyfuncitem.get_closest_marker("own_process") is None:
        return None
    if os.environ.get(_OWN_PROCESS) == nodeid:
        return None  # the child: run it here
    import subprocess
    import sys

    command = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "-rs", nodeid],
        env={**_ENVIRON, _OWN_PROCESS: nodeid},
        cwd=pyfuncitem.config.rootpath,
        capture_output=True,
        text=True,
        timeout=280,  # under the run's 300 s per test: the child is killed, not left behind
    )
    summary = done.stdout.strip().splitlines()[-1:] or [""]
    if done.returncode == 0 and " passed" not in summary[0] and "skipped" in summary[0]:
        reason = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
        pytest.skip(f"in its own process: {(reason or summary)[0]}")
    if done.returncode != 0 or " passed" not in summary[0]:
        pytest.fail(
            f"in its own process (exit {done.returncode}):\n{done.stdout[-6000:]}"
            f"\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return True
