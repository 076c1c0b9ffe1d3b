"""Run an ASGI app under a real server (uvicorn or gunicorn) in a subprocess, the way a user
would, and collect its stdout lines (our JSON logs) for assertions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess with its stdout captured line by line in a background thread."""

    def __init__(
        self,
        app: str = "examples.demo.app:app",
        *,
        env: Mapping[str, str] | None = None,
        server: str = "uvicorn",
        extra_args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "KIKI_OTEL_", "DEMO_"))
        }
        full_env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
        full_env.update(env or {})
        if server == "script":  # app is a script that starts its server on argv[1]'s port
            cmd = [sys.executable, app, str(self.port)]
        elif server == "uvicorn":
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *extra_args,
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                app,
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-b",
                f"127.0.0.1:{self.port}",
                *extra_args,
            ]
        self.lines: list[str] = []
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(REPO),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, path: str = "/health/live", timeout: float = 30.0) -> Self:
        """Poll until the server answers, or fail with its output so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"server exited {self._proc.returncode}:\n" + self.output())
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server not ready:\n" + self.output())

    @property
    def pid(self) -> int:
        return self._proc.pid

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line that is a JSON object (non-JSON lines are kept in ``lines``)."""
        parsed = []
        for line in list(self.lines):
            if line.startswith("{"):
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    continue
        return parsed

    def wait_for_json(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The JSON lines ``matches`` accepts, once there is one: stdout is read on a thread,
        so a line written just now may not be in ``lines`` yet. Fails with the output."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.json_lines() if matches(line)]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert found, "no such line:\n" + self.output()
        return found

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self._proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for exit; returns the exit code (raises if it does not exit in time)."""
        code = self._proc.wait(timeout)
        self._reader.join(5.0)
        return code

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5.0)
        self._reader.join(5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
