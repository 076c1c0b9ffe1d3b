"""Run the stack's real binaries (built by stack/build.sh) as subprocesses on 127.0.0.1.

Every component gets free ports through the environment variables that the shared config files
(collector-config/config.yaml, jaeger/config.yaml) read, so the tests run the very files that
docker-compose.yml mounts. Output of each process goes to a log file whose tail is shown when
something does not come up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[2]

# Variables of the developer's shell that must not leak into the processes under test.
_SCRUBBED_PREFIXES = ("OTEL_", "KIKI_OTEL_", "DEMO_", "JAEGER_", "OTLP_", "PROMETHEUS_", "LOKI_")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 and not handed out before in this session
    (two binds in a row may get the same ephemeral port; two components would then clash)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """os.environ without our own prefixes, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(extra)
    return env


def build_stack() -> Path:
    """Run stack/build.sh (cached: seconds when warm) and return its bin dir."""
    proc = subprocess.run(
        ["bash", str(REPO / "stack" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stack/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"stack/build.sh printed no bin dir:\n{proc.stderr[-4000:]}")
    return Path(lines[-1])


@dataclass
class Proc:
    """One started subprocess with its log file; stop() ends it (and only it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @classmethod
    def start(
        cls, name: str, argv: list[str], *, env: Mapping[str, str], log_dir: Path, cwd: Path = REPO
    ) -> Proc:
        log_path = log_dir / f"{name}.log"
        log = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(name, popen, log_path, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def wait_until(
    what: str, check: Callable[[], Any], *, timeout: float, proc: Proc | None = None
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the process' log tail."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n{proc.tail()}"
            )
        try:
            result = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(0.5)
    detail = f"\nlast error: {last_error!r}" if last_error else ""
    log = f"\n--- {proc.name} log ---\n{proc.tail()}" if proc else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{log}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


@dataclass
class Stack:
    """The running collector, Jaeger and Prometheus, and where to reach them."""

    bin: Path
    prometheus_url: str
    jaeger_url: str
    collector_otlp_http: str
    collector_otlp_grpc: str
    procs: list[Proc]

    def assert_alive(self) -> None:
        for proc in self.procs:
            assert proc.alive(), f"{proc.name} died:\n{proc.tail()}"

    def prom_query(
        self, expr: str, *, instant: bool = True, window_s: int = 120
    ) -> list[dict[str, Any]]:
        """Run a PromQL query; raise on a query error, return the (maybe empty) result."""
        now = time.time()
        if instant:
            url, params = "/api/v1/query", {"query": expr, "time": f"{now:.3f}"}
        else:
            url = "/api/v1/query_range"
            params = {
                "query": expr,
                "start": f"{now - window_s:.3f}",
                "end": f"{now:.3f}",
                "step": "15",
            }
        response = httpx.post(self.prometheus_url + url, data=params, timeout=15.0)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(
                f"PromQL error for {expr!r}: {body.get('errorType')}: {body.get('error')}"
            )
        return list(body["data"]["result"])


def start_stack(bin_dir: Path, work: Path, logs_otlp_endpoint: str) -> Stack:
    """Start Prometheus, Jaeger and the collector with the repo's config files; wait until ready."""
    ports = {
        name: free_port()
        for name in (
            "prom",
            "j_grpc",
            "j_http",
            "j_query",
            "j_query_grpc",
            "j_health",
            "j_metrics",
            "c_grpc",
            "c_http",
            "c_health",
            "c_metrics",
        )
    }
    prom_url = f"http://127.0.0.1:{ports['prom']}"
    jaeger_url = f"http://127.0.0.1:{ports['j_query']}"
    procs: list[Proc] = []
    try:
        prom = Proc.start(
            "prometheus",
            [
                str(bin_dir / "prometheus"),
                f"--config.file={REPO / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
                "--web.enable-otlp-receiver",
                "--enable-feature=exemplar-storage",
            ],
            env=clean_env({}),
            log_dir=work,
        )
        procs.append(prom)
        wait_until(
            "Prometheus /-/ready", lambda: http_ok(prom_url + "/-/ready"), timeout=60, proc=prom
        )

        jaeger = Proc.start(
            "jaeger",
            [str(bin_dir / "jaeger"), f"--config={REPO / 'jaeger' / 'config.yaml'}"],
            env=clean_env(
                {
                    "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['j_grpc']}",
                    "JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['j_http']}",
                    "JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{ports['j_query']}",
                    "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{ports['j_query_grpc']}",
                    "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{ports['j_health']}",
                    "JAEGER_METRICS_HOST": "127.0.0.1",
                    "JAEGER_METRICS_PORT": str(ports["j_metrics"]),
                    "JAEGER_PROMETHEUS_URL": prom_url,
                }
            ),
            log_dir=work,
        )
        procs.append(jaeger)
        wait_until(
            "Jaeger query /api/services",
            lambda: http_ok(jaeger_url + "/api/services"),
            timeout=60,
            proc=jaeger,
        )

        collector = Proc.start(
            "collector",
            [
                str(bin_dir / "otelcol-kiki"),
                f"--config={REPO / 'collector-config' / 'config.yaml'}",
            ],
            env=clean_env(
                {
                    "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['c_grpc']}",
                    "OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['c_http']}",
                    "HEALTH_CHECK_ENDPOINT": f"127.0.0.1:{ports['c_health']}",
                    "OTELCOL_METRICS_HOST": "127.0.0.1",
                    "OTELCOL_METRICS_PORT": str(ports["c_metrics"]),
                    "JAEGER_OTLP_ENDPOINT": f"127.0.0.1:{ports['j_grpc']}",
                    "PROMETHEUS_OTLP_ENDPOINT": f"{prom_url}/api/v1/otlp",
                    "LOKI_OTLP_ENDPOINT": logs_otlp_endpoint,
                    # flush span metrics often so Jaeger's Monitor tab has data within seconds
                    "SPANMETRICS_FLUSH_INTERVAL": "2s",
                }
            ),
            log_dir=work,
        )
        procs.append(collector)
        wait_until(
            "collector health_check",
            lambda: http_ok(f"http://127.0.0.1:{ports['c_health']}/"),
            timeout=60,
            proc=collector,
        )
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise
    return Stack(
        bin_dir,
        prom_url,
        jaeger_url,
        f"http://127.0.0.1:{ports['c_http']}",
        f"http://127.0.0.1:{ports['c_grpc']}",
        procs,
    )


def stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop()
