"""Real dependencies for tests: redis-server, PostgreSQL, an HTTP service, a hanging socket.

Each runs on a free 127.0.0.1 port in a throwaway directory and is stopped afterwards; each
can be killed and restarted on the same port for fault tests. PostgreSQL refuses to run as
root, so as root it runs as the ``postgres`` user (``subprocess`` ``user=``, so the pid we
hold is the postmaster itself and signals reach it).

Fixtures (import them into ``tests/conftest.py``): ``redis_server`` (per test),
``postgres_server`` (per session; tests that stop it start it again), ``http_dependency``
(one uvicorn process per session, counters reset per test), ``hanging_port``.

Run ``python tests/support/services.py http-dependency PORT`` to serve the HTTP dependency.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_USER = "kiki"
PG_PASSWORD = "s3cret-pg-Pa55"
"""Deliberately distinctive, so tests can assert it never appears in a health body."""


def free_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test (not hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"gave up waiting for {what or predicate}")


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class RedisServer:
    """A real redis-server without persistence, in a temp dir."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self._binary = binary
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="kiki-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) on the same port and wait until it answers PING."""
        args = [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pings, what=f"redis on {self.port}")

    def _pings(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, like a crashed node."""
        _stop(self._proc, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        _stop(self._proc)
        shutil.rmtree(self._dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found


class PostgresServer:
    """A real PostgreSQL cluster (initdb'd per session) with password (scram) auth over TCP."""

    password = PG_PASSWORD

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="kiki-pg-"))
        self._data = self._dir / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # postgres refuses root: run as the postgres user
            account = pwd.getpwnam("postgres")
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self._dir, account.pw_uid, account.pw_gid)
        self._initdb()

    def dsn(self, driver: str = "asyncpg", *, password: str = PG_PASSWORD) -> str:
        """A SQLAlchemy URL with credentials, e.g. ``postgresql+asyncpg://kiki:...@127.0.0.1:P/postgres``."""
        return f"postgresql+{driver}://{PG_USER}:{password}@127.0.0.1:{self.port}/postgres"

    def _initdb(self) -> None:
        pwfile = self._dir / "pw"
        pwfile.write_text(PG_PASSWORD)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self._data),
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._as,
        )

    def start(self) -> None:
        """Start (or restart after :meth:`kill`) and wait until it accepts connections."""
        args = [
            _pg_bin("postgres"),
            "-D",
            str(self._data),
            "-p",
            str(self.port),
            "-k",
            str(self._dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=40",
            "-c",
            "shared_buffers=16MB",
        ]
        log = open(self._dir / "server.log", "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, **self._as)
        log.close()
        wait_until(self._connects, what=f"postgres on {self.port}", timeout=30)

    def _connects(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn("x").replace("+x", ""), connect_timeout=1) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, crash recovery on the next start."""
        _stop(self._proc, signal.SIGQUIT)

    def pause(self, sig: int = signal.SIGSTOP) -> None:
        """Freeze the server and its backends (a hung database: connections open, no
        answers); :meth:`resume` thaws them."""
        assert self._proc is not None
        parent = self._proc.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # (a process gone meanwhile)
                continue
            if int(fields[1]) == parent:
                children.append(int(stat.parent.name))
        for pid in (parent, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self.pause(signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown and remove the cluster."""
        _stop(self._proc, signal.SIGINT)
        shutil.rmtree(self._dir, ignore_errors=True)


class HttpDependency:
    """Another uvicorn process serving :func:`dependency_app`; tests steer it over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait until it answers."""
        args = [sys.executable, __file__, "http-dependency", str(self.port)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _accepts(self.port), what=f"http dependency on {self.port}")

    def _call(self, path: str) -> str:
        import httpx

        return httpx.post(f"{self.base_url}{path}", timeout=5).text

    def calls(self) -> int:
        """How many times ``GET /healthz`` was served since the last reset."""
        return int(self._call("/control/count"))

    def set_status(self, status: int) -> None:
        """Make ``/healthz`` answer this status from now on."""
        self._call(f"/control/status/{status}")

    def reset(self) -> None:
        """Status 200, counter 0."""
        self._call("/control/reset")

    def stop(self) -> None:
        """Stop the process."""
        _stop(self._proc)


class HangingPort:
    """A TCP port that completes the handshake (kernel backlog) but never reads or answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])

    def close(self) -> None:
        """Close the listening socket."""
        self._sock.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test (tests may kill and restart it)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per session (initdb costs seconds); running at each use."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _http_dependency_process() -> Iterator[HttpDependency]:
    server = HttpDependency()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def http_dependency(_http_dependency_process: HttpDependency) -> HttpDependency:
    """The session's HTTP dependency with its counter at 0 and ``/healthz`` answering 200."""
    _http_dependency_process.reset()
    return _http_dependency_process


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port whose server accepts connections and never says a word."""
    server = HangingPort()
    yield server.port
    server.close()


# -- the HTTP dependency's app (runs in its own process) -----------------------------------

_state = {"count": 0, "status": 200}


async def dependency_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Count ``GET /healthz`` and answer the configured status; ``/control/*`` steers it."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    body = b"ok"
    status = 200
    if path == "/healthz":
        _state["count"] += 1
        status = _state["status"]
    elif path == "/control/count":
        body = str(_state["count"]).encode()
    elif path.startswith("/control/status/"):
        _state["status"] = int(path.rsplit("/", 1)[1])
    elif path == "/control/reset":
        _state.update(count=0, status=200)
    else:
        status = 404
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__" and sys.argv[1:2] == ["http-dependency"]:
    import uvicorn

    uvicorn.run(
        dependency_app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", lifespan="off"
    )
