"""Prefork servers: ``uvicorn --workers N`` and ``gunicorn -k uvicorn_worker.UvicornWorker
-w N`` with and without ``--preload``. Every worker is its own instance (own
``service.instance.id``, its own ``process.pid``), exports its own telemetry over its own
connection, and flushes it on its own shutdown."""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.integration.test_shutdown_signals import (
    DEADLINE_S,
    SLOW_S,
    _write_app,
    assert_everything_arrived,
    assert_slow_were_in_flight,
    events,
    otlp_env,
    traffic_then_signals,
)
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.integration

WORKERS = 2
SERVERS = {
    "uvicorn-workers": ("uvicorn", ["--workers", str(WORKERS)]),
    "gunicorn": ("gunicorn", ["-w", str(WORKERS)]),
    "gunicorn-preload": ("gunicorn", ["-w", str(WORKERS), "--preload"]),
}


def worker_pids(server: ServerProcess) -> set[int]:
    """Worker pids as the servers announce them in their own log lines."""
    pattern = re.compile(r"(?:Booting worker with pid: |Started server process \[)(\d+)")
    return {
        int(match.group(1))
        for line in server.json_lines()
        if (match := pattern.search(str(line.get("event", ""))))
    } - {server.pid}


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_workers_sharing_an_explicit_instance_id_each_get_their_own(kind: str) -> None:
    """``service.instance.id`` set for the pod (OTEL_RESOURCE_ATTRIBUTES, as Kubernetes'
    downward API gives it) is ``<id>-<pid>`` in each worker: workers sharing one id would
    interleave their cumulative metrics in one series (read as counter resets). Without
    ``--preload`` each worker runs configure() itself; with it, each is forked after it."""
    server_name, args = SERVERS[kind]
    with OTLPReceiver() as rx:
        env = otlp_env(rx.http_endpoint, kind, "http/protobuf")
        env["OTEL_RESOURCE_ATTRIBUTES"] = "service.instance.id=plans-7d9f-x2"
        with ServerProcess(server=server_name, env=env, extra_args=args) as server:
            server.wait_ready()
            ids = {
                httpx.get(f"{server.url}/plans/{i}", headers={"connection": "close"}).headers[
                    "x-request-id"
                ]
                for i in range(40)
            }
            server.signal(signal.SIGTERM)
            server.wait(DEADLINE_S + 10)
        rx.wait_for(lambda: {s.trace_id for s in rx.spans() if s.kind == "SERVER"} >= ids)
        seen = {
            (span.resource["process.pid"], span.resource["service.instance.id"])
            for span in rx.spans()
            if span.trace_id in ids
        }
    workers = worker_pids(server)
    assert seen and seen <= {(pid, f"plans-7d9f-x2-{pid}") for pid in workers}, (seen, workers)


@pytest.mark.parametrize(
    ("kind", "protocol"),
    [
        ("uvicorn-workers", "http/protobuf"),
        ("gunicorn", "http/protobuf"),
        ("gunicorn-preload", "http/protobuf"),
        ("gunicorn-preload", "grpc"),
    ],
)
def test_each_worker_is_its_own_instance_and_flushes_on_sigterm(kind: str, protocol: str) -> None:
    """500 requests over fresh connections (spread over the workers) and 10 in flight at
    SIGTERM: all answered, all spans and logs arrive; each worker's telemetry carries its
    own pid (never the master's) and its own service.instance.id; each worker logs and
    exports its own shutdown report; the master exits 0 within the deadline. With
    --preload the master (which ran configure()) also flushes at exit."""
    server_name, args = SERVERS[kind]
    with OTLPReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        env = otlp_env(endpoint, kind, protocol)
        with ServerProcess(server=server_name, env=env, extra_args=args) as server:
            server.wait_ready()
            traffic = traffic_then_signals(server, keepalive=False)
            code = server.wait(SLOW_S + DEADLINE_S + 10)
            took = time.monotonic() - traffic.signalled
            assert took < SLOW_S + DEADLINE_S + 1  # allowed: deadline is the behaviour
            assert code == 0
        assert [r.status_code for r in traffic.fast] == [200] * 500
        assert [getattr(r, "status", r) for r in traffic.slow] == [200] * 10
        assert_everything_arrived(rx, traffic)
        assert_slow_were_in_flight(rx, traffic)

        instances: dict[object, set[object]] = defaultdict(set)
        for span in rx.spans():
            if span.trace_id in traffic.ids:
                instances[span.resource["process.pid"]].add(span.resource["service.instance.id"])
        workers = worker_pids(server)
        assert set(instances) <= workers and len(instances) == WORKERS, (instances, workers)
        # uvicorn's own lines go through the JSON chain in every worker (with --preload the
        # worker object, built in the master, had given them gunicorn's handlers again)
        started = {
            int(match.group(1))
            for line in server.json_lines()
            if line.get("logger") == "uvicorn.error"
            and (match := re.search(r"Started server process \[(\d+)\]", str(line.get("event"))))
        }
        assert started == workers, (started, workers)
        assert all(len(ids) == 1 for ids in instances.values())
        assert len(set().union(*instances.values())) == WORKERS

        reports = events(server, "shutdown.completed")
        preload = "--preload" in args
        assert len(reports) == WORKERS + (1 if preload else 0)
        assert all(report["abandoned"] == [] for report in reports)
        exported = rx.wait_for(
            lambda: (
                {r.resource["process.pid"] for r in rx.logs() if r.body == "shutdown.completed"}
                >= (workers | ({server.pid} if preload else set()))
            )
        )
        assert exported


def _sockets_to(port: int) -> dict[int, int]:
    """inode -> local port of this host's TCP sockets connected to 127.0.0.1:``port``."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01":  # ESTABLISHED
                found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_preload_workers_do_not_share_the_masters_collector_connection(tmp_path: Path) -> None:
    """With --preload, a master that exported over OTLP/HTTP before forking holds a
    keep-alive connection to the collector; no worker may inherit and write to it. Each
    process's collector connections are its own (no socket is held by two processes)."""
    path = _write_app(
        tmp_path,
        "early",
        """
        import time
        from examples.demo.app import app, log
        log.info("master.exported.before.fork")
        time.sleep(0.5)  # OTEL_BLRP_SCHEDULE_DELAY=50: the master exports (and keeps the
                         # connection alive) before gunicorn forks the workers
        """,
    )
    env = otlp_env("", "early", OTEL_BLRP_SCHEDULE_DELAY="50", OTEL_BSP_SCHEDULE_DELAY="50")
    with OTLPReceiver() as rx:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint, **path)
        args = ["-w", str(WORKERS), "--preload"]
        with ServerProcess("early:app", server="gunicorn", env=env, extra_args=args) as server:
            server.wait_ready()
            master_records = [r for r in rx.logs() if r.body == "master.exported.before.fork"]
            assert master_records and master_records[0].resource["process.pid"] == server.pid
            for _ in range(40):  # fresh connections, so both workers serve and export
                httpx.get(server.url + "/plans/1", headers={"Connection": "close"})
            workers = worker_pids(server)
            rx.wait_for(
                lambda: {s.resource["process.pid"] for s in rx.spans()} >= workers, timeout=10
            )
            collector = _sockets_to(rx.http_port)
            held = {pid: _socket_inodes(pid) & set(collector) for pid in workers | {server.pid}}
            assert all(held.values()), held  # each process has its own connection...
            owners = defaultdict(set)
            for pid, inodes in held.items():
                for inode in inodes:
                    owners[inode].add(pid)
            assert all(len(pids) == 1 for pids in owners.values()), held  # ...and only its own
            server.signal(signal.SIGTERM)
            assert server.wait(DEADLINE_S + 10) == 0
