"""Fixtures for the stack tests: build the binaries (cached), run the collector, Jaeger and
Prometheus on free 127.0.0.1 ports with the repo's config files, a stand-in for Loki, the two demo
services and their traffic. Everything is session-scoped: started once, torn down at the end.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from tests.support.otlp_receiver import OTLPReceiver

from ._stack import (
    REPO,
    Proc,
    Stack,
    build_stack,
    clean_env,
    free_port,
    start_stack,
    stop_all,
    wait_until,
)

STACK_BINARIES = ("otelcol-kiki", "jaeger", "prometheus", "promtool")
COLD_BUILD_TIMEOUT_S = 2400

# Sent by the traffic generator on every request; must never show up in Jaeger.
SECRET_BEARER = "Bearer e2e-s3cr3t-t0ken-do-not-leak"


def _stack_is_built() -> bool:
    bin_dir = subprocess.run(
        ["bash", str(REPO / "stack" / "build.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return bool(bin_dir) and all((Path(bin_dir) / name).is_file() for name in STACK_BINARIES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test; a cold stack build (~10 min on 2 cores) happens in
    the first one's setup, so it gets a longer timeout then."""
    ours = [item for item in items if Path(str(item.fspath)).is_relative_to(Path(__file__).parent)]
    cold = bool(ours) and config.pluginmanager.hasplugin("timeout") and not _stack_is_built()
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if cold:
            item.add_marker(pytest.mark.timeout(COLD_BUILD_TIMEOUT_S))


@pytest.fixture(scope="session")
def stack_bin() -> Path:
    """The bin dir with otelcol-kiki, jaeger, prometheus, promtool (stack/build.sh, cached)."""
    try:
        return build_stack()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def loki_standin() -> Iterator[OTLPReceiver]:
    """An OTLP receiver where the collector's Loki exporter sends the logs."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(
    stack_bin: Path, loki_standin: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Prometheus, Jaeger and the collector, running and ready."""
    work = tmp_path_factory.mktemp("stack")
    # The collector's otlp_http exporter appends /v1/logs to the endpoint.
    running = start_stack(stack_bin, work, loki_standin.http_endpoint)
    yield running
    stop_all(running.procs)


def start_service(
    stack: Stack,
    name: str,
    port: int,
    app: str,
    extra: dict[str, str],
    log_dir: Path,
    procs: list[Proc],
) -> Proc:
    """A kiki-otel ASGI app (``module:attr``) under uvicorn on 127.0.0.1:``port``, exporting to the
    collector; appended to ``procs`` before it is waited for, so the caller can stop it on failure.
    """
    env = clean_env(
        {
            "OTEL_SERVICE_NAME": name,
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.collector_otlp_http,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=e2e",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            # as in docker-compose.yml: checks refresh in the background, so health metrics
            # exist even for dependencies no readiness probe checks (non-critical ones)
            "KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL": "2",
            **extra,
        }
    )
    proc = Proc.start(
        f"{name}-{port}",
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_dir=log_dir,
    )
    procs.append(proc)
    wait_until(
        f"{name} /health/live",
        lambda: httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200,
        timeout=60,
        proc=proc,
    )
    return proc


@dataclass
class Demo:
    """The two demo services: A (upstream, calls B) and B."""

    a_url: str
    b_url: str
    a_name: str = "e2e-plans-api"
    b_name: str = "e2e-value-api"
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="session")
def demo(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """examples/demo/app.py twice under uvicorn, exporting to the collector."""
    app = REPO / "examples" / "demo" / "app.py"
    if not app.exists():
        pytest.fail(f"{app} does not exist: the live stack test runs the demo service")
    work = tmp_path_factory.mktemp("demo")
    a_port, b_port = free_port(), free_port()
    running = Demo(a_url=f"http://127.0.0.1:{a_port}", b_url=f"http://127.0.0.1:{b_port}")

    def start(name: str, port: int, extra: dict[str, str]) -> Proc:
        return start_service(stack, name, port, "examples.demo.app:app", extra, work, running.procs)

    try:
        # B exports over OTLP/gRPC (kiki's fast gRPC exporter), A over OTLP/HTTP: the
        # cross-service trace in Jaeger then proves both against the real collector.
        start(
            running.b_name,
            b_port,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": stack.collector_otlp_grpc,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
        )
        start(running.a_name, a_port, {"DEMO_DOWNSTREAM_URL": running.b_url})
    except BaseException:
        stop_all(running.procs)
        raise
    yield running
    stop_all(running.procs)


@dataclass
class Mixed:
    """One more service of the demo app, as two instances in different health states: the
    first one's downstream (demo B) answers, the second one's is a closed port, so its
    non-critical `downstream` check fails (unhealthy) and the instance is degraded."""

    name: str = "e2e-mixed-api"
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="session")
def mixed(stack: Stack, demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    work = tmp_path_factory.mktemp("mixed")
    running = Mixed()
    closed = f"http://127.0.0.1:{free_port()}"
    try:
        for downstream in (demo.b_url, closed):
            start_service(
                stack,
                running.name,
                free_port(),
                "examples.demo.app:app",
                {"DEMO_DOWNSTREAM_URL": downstream},
                work,
                running.procs,
            )
    except BaseException:
        stop_all(running.procs)
        raise
    yield running
    stop_all(running.procs)


@dataclass
class LeakApp:
    """tests/e2e/leak_app.py, which records secrets (and look-alikes) on purpose."""

    url: str
    name: str = "e2e-leak-api"
    procs: list[Proc] = field(default_factory=list)

    def request(self, path: str) -> str:
        """GET path; return the trace id (X-Request-ID) of the request."""
        with suppress_http_instrumentation():
            response = httpx.get(f"{self.url}{path}", timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]


@pytest.fixture(scope="session")
def leak_app(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakApp]:
    work = tmp_path_factory.mktemp("leak")
    port = free_port()
    running = LeakApp(url=f"http://127.0.0.1:{port}")
    try:
        start_service(stack, running.name, port, "tests.e2e.leak_app:app", {}, work, running.procs)
    except BaseException:
        stop_all(running.procs)
        raise
    yield running
    stop_all(running.procs)


@dataclass
class Traffic:
    """What the traffic generator sent and got back (X-Request-ID = trace id)."""

    plan_ids: list[str] = field(default_factory=list)
    checkout_ids: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


def _send(client: httpx.Client, demo: Demo, n: int, traffic: Traffic) -> None:
    headers = {"Authorization": SECRET_BEARER}
    if n % 20 == 3:  # what an orchestrator's readiness probe does: runs the health checks
        for url in (demo.a_url, demo.b_url):
            client.get(f"{url}/health/ready")
    if n % 10 == 5:
        response = client.post(f"{demo.a_url}/checkout", headers=headers)
        traffic.checkout_ids.append(response.headers.get("x-request-id", ""))
    elif n % 25 == 7:
        response = client.get(f"{demo.a_url}/boom", headers=headers)
    else:
        response = client.get(f"{demo.a_url}/plans/{n % 7}", headers=headers)
        traffic.plan_ids.append(response.headers.get("x-request-id", ""))
    traffic.statuses[response.status_code] = traffic.statuses.get(response.status_code, 0) + 1


@pytest.fixture(scope="session")
def traffic(demo: Demo) -> Iterator[Traffic]:
    """~10 requests/s to service A in a background thread for the whole session (at most 10 min)."""
    sent = Traffic()

    def run() -> None:
        deadline = time.monotonic() + 600
        # The harness is not the service under test: unit tests that run later configure()
        # kiki-otel in this process, which instruments httpx globally, and this thread's calls
        # would turn into client spans at their receivers.
        with suppress_http_instrumentation(), httpx.Client(timeout=10) as client:
            n = 0
            while not sent.stop.is_set() and time.monotonic() < deadline:
                try:
                    _send(client, demo, n, sent)
                except httpx.HTTPError:
                    sent.statuses[-1] = sent.statuses.get(-1, 0) + 1
                n += 1
                sent.stop.wait(0.1)

    thread = threading.Thread(target=run, name="e2e-traffic", daemon=True)
    # Nor are its "HTTP Request: ..." lines: they would reach the log pipeline of whichever
    # later test has configured logging, and tests that read every line they emit.
    quiet = _NotFromThread(thread.name)
    logging.getLogger("httpx").addFilter(quiet)
    thread.start()
    wait_until("first traced requests", lambda: sent.plan_ids and sent.checkout_ids, timeout=30)
    yield sent
    sent.stop.set()
    thread.join(15)
    logging.getLogger("httpx").removeFilter(quiet)


class _NotFromThread(logging.Filter):
    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self._thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != self._thread_name
