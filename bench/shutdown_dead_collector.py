"""Request latency and SIGTERM-to-exit time of the demo under uvicorn, with a healthy and
with a dead collector, printed side by side in one run.

    .venv/bin/python -m bench.shutdown_dead_collector [--requests 2000] [--protocol grpc]

Collector states: ``ok`` (an OTLPReceiver accepting everything), ``refused`` (a closed
port), ``hang`` (the receiver never answers) and ``error`` (503 / UNAVAILABLE). For each,
the demo is started fresh, warmed up, then ``--requests`` sequential keep-alive GETs of
/plans/{id} are timed on one connection (p50/p90/p99/max); then SIGTERM, timing until
the process is gone, and the ``shutdown.completed`` line is read back. This is a
benchmark, not a test: it asserts nothing and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from typing import Any

import httpx

from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import ServerProcess, free_port

STATES = ("ok", "refused", "hang", "error")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(state: str, requests: int, protocol: str, timeout: float) -> dict[str, Any]:
    """One fresh server against a collector in ``state``; latencies in ms, exit in s."""
    mode = "ok" if state == "refused" else state
    with OTLPReceiver(mode=mode, discard=True) as rx:  # type: ignore[arg-type]
        if state == "refused":
            endpoint = f"http://127.0.0.1:{free_port()}"
        else:
            endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        env = {
            "OTEL_SERVICE_NAME": f"bench-{state}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "KIKI_OTEL_SHUTDOWN__TIMEOUT": str(timeout),
        }
        with ServerProcess(env=env) as server:
            server.wait_ready()
            latencies: list[float] = []
            with httpx.Client(timeout=30) as client:
                for i in range(200):  # warm-up
                    client.get(f"{server.url}/plans/{i}")
                for i in range(requests):
                    started = time.perf_counter()
                    client.get(f"{server.url}/plans/{i}")
                    latencies.append((time.perf_counter() - started) * 1000)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            server.wait(timeout + 30)
            exit_s = time.monotonic() - signalled
            report = next(
                (line for line in server.json_lines() if line.get("event") == "shutdown.completed"),
                {},
            )
    return {
        "p50": statistics.median(latencies),
        "p90": _percentile(latencies, 0.90),
        "p99": _percentile(latencies, 0.99),
        "max": max(latencies),
        "exit_s": exit_s,
        "flush_s": report.get("flush_s", float("nan")),
        "abandoned": ",".join(report.get("abandoned", [])) or "-",
        "requests": rx.request_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--protocol", default="http/protobuf", choices=["http/protobuf", "grpc"])
    parser.add_argument("--timeout", type=float, default=5.0, help="KIKI_OTEL_SHUTDOWN__TIMEOUT")
    args = parser.parse_args()
    rows = {state: measure(state, args.requests, args.protocol, args.timeout) for state in STATES}
    print(
        f"demo under uvicorn, {args.requests} sequential keep-alive GETs, "
        f"protocol={args.protocol}, shutdown deadline={args.timeout}s"
    )
    header = (
        "collector",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "exit s",
        "flush s",
        "abandoned",
        "exports seen",
    )
    print("  ".join(f"{h:>12}" for h in header))
    for state, row in rows.items():
        cells = (
            state,
            f"{row['p50']:.2f}",
            f"{row['p90']:.2f}",
            f"{row['p99']:.2f}",
            f"{row['max']:.1f}",
            f"{row['exit_s']:.2f}",
            f"{row['flush_s']:.2f}",
            row["abandoned"],
            str(row["requests"]),
        )
        print("  ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
