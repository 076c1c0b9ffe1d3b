"""/health/ready latency and throughput under concurrent probes: cached vs uncached checks.

A real redis-server is the (critical) dependency; the service is HealthEndpoints in its own
uvicorn process; the load comes from N concurrent keep-alive connections
(raw asyncio streams: an httpx client would measure itself). "cached" uses the
default TTL (2 s); "uncached" uses TTL 0, so every probe that does not find a run in flight
starts one (single-flight still coalesces concurrent probes). Redis' own PING counter shows
how many calls the dependency really got.

    .venv/bin/python bench/health_ready.py [--requests 20000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.services import RedisServer, free_port, wait_until


def build_app(redis_url: str, ttl: float) -> object:
    """The service under test: health endpoints around a 404 app, one Redis check."""
    from opentelemetry.metrics import NoOpMeterProvider

    from kiki_otel._health import HealthRegistry
    from kiki_otel._health_asgi import HealthEndpoints
    from kiki_otel._lifecycle import Lifecycle
    from kiki_otel._settings import HealthSettings

    settings = HealthSettings(cache_ttl=ttl)
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    registry = HealthRegistry(
        settings=settings,
        service_name="bench",
        service_version=None,
        meter_provider=NoOpMeterProvider(),
        lifecycle=lifecycle,
    )
    registry.add_redis("redis", redis_url)

    async def not_found(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("only health paths are benchmarked")

    return HealthEndpoints(not_found, registry=registry, settings=settings)


def serve(port: int, redis_url: str, ttl: float) -> None:
    import uvicorn

    uvicorn.run(
        build_app(redis_url, ttl),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


def pings(redis: RedisServer) -> int:
    import redis as redis_sync

    stats = redis_sync.Redis.from_url(redis.url).info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive HTTP/1.1 GET on raw streams (httpx's own overhead would dominate)."""
    writer.write(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def load(
    port: int, path: str, requests: int, concurrency: int
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    failures = 0
    queue = iter(range(requests))

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _get(reader, writer, path)  # warm: connection set up, first check run
        await start.wait()
        for _ in queue:
            started = time.perf_counter()
            status = await _get(reader, writer, path)
            latencies.append(time.perf_counter() - started)
            failures += status != 200
        writer.close()

    start = asyncio.Event()
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*workers)
    return latencies, time.perf_counter() - began, failures


def scenario(
    name: str, path: str, ttl: float, redis: RedisServer, args: argparse.Namespace
) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), redis.url, str(ttl)])
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200)
        before = pings(redis)
        latencies, elapsed, failures = asyncio.run(
            load(port, path, args.requests, args.concurrency)
        )
        calls = pings(redis) - before
    finally:
        proc.terminate()
        proc.wait(10)
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:<16} {path:<14} ttl={ttl:<4} requests={len(ms)} concurrency={args.concurrency} "
        f"p50={statistics.median(ms):.2f}ms p99={p99:.2f}ms req/s={len(ms) / elapsed:,.0f} "
        f"redis_pings={calls} non_200={failures}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "REDIS_URL", "TTL"))
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], float(args.serve[2]))
        return
    redis = RedisServer()
    redis.start()
    try:
        scenario("live (baseline)", "/health/live", 2.0, redis, args)
        scenario("ready cached", "/health/ready", 2.0, redis, args)
        scenario("ready uncached", "/health/ready", 0.0, redis, args)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
