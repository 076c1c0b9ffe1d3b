"""In-process cost per request: drive the ASGI app directly, no server, no sockets.

``python -m bench.inprocess SCENARIO N`` (``BENCH_SCENARIO`` semantics as in ``bench.app``)
sends N GET requests through the app on one event loop, then flushes every exporter, and
prints one JSON line: process CPU seconds (all threads: exporters included) and wall time.
The difference to ``bare`` is what telemetry costs per request, free of server and network
noise. Run by ``bench/run.py``; stdout of the app (JSON log lines) goes to /dev/null there.

Every ``BURST`` requests the driver idles 0.5 ms in the selector, as a server's loop does
between bursts of ready sockets. Without that the loop only lets go of the GIL at the 5 ms
switch interval, the exporter threads starve, and the SDK batch queues overflow: a
back-to-back loop dropped ~90% of spans and log records, so it timed the drop path instead
of the export. The idle moments cost some CPU (bare ~45 -> ~58 us/request here: timer
wake-ups on this VM), the same for every scenario; a ``time.sleep(0)`` per request instead
cost ~90 us, being a syscall. ``dropped`` in the output counts the SDK's "Queue full"
drops; it must be 0 for a valid number (``bench/run.py`` flags it otherwise). ``threads``
splits the CPU seconds by thread (from /proc, Linux): the event loop's share against the
exporter threads'; ``thread_switches`` splits the voluntary context switches the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time


def _scope(path: bytes) -> dict[str, object]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"accept", b"*/*"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


BURST = 64
"""Requests between two moments idle in the selector (the GIL free for exporter threads)."""


async def _drive(app: object, n: int) -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        return None

    for i in range(n):
        await app(_scope(b"/items/%d" % (i % 100)), receive, send)  # type: ignore[operator]
        if i % BURST == BURST - 1:
            await asyncio.sleep(0.0005)


def _count_drops() -> dict[str, int]:
    """Count the SDK batch processors' "Queue full" drops (their log is de-duplicated)."""
    counts = {"dropped": 0}
    try:
        from opentelemetry.sdk import _shared_internal
    except ImportError:  # an SDK without the shared batch processor: nothing to count
        return counts
    warning = _shared_internal._logger.warning

    def counted(msg: str, *args: object, **kwargs: object) -> None:
        if msg.startswith("Queue full"):
            counts["dropped"] += 1
        warning(msg, *args, **kwargs)  # type: ignore[arg-type]

    _shared_internal._logger.warning = counted  # type: ignore[method-assign]
    return counts


def _thread_stats() -> dict[str, tuple[float, int]]:
    """CPU seconds and voluntary context switches per live thread (by name), from /proc.

    Where the exporters' share of the CPU goes, and which thread blocks (mostly: waits for
    the GIL another thread took).
    """
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    result: dict[str, tuple[float, int]] = {}
    for thread in threading.enumerate():
        task = f"/proc/self/task/{thread.native_id}"
        try:
            with open(f"{task}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            with open(f"{task}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:  # not Linux, or the thread just ended
            continue
        # after the ")" of comm: state is field 0, utime 11, stime 12 (proc(5) numbering - 3)
        cpu = (int(fields[11]) + int(fields[12])) / tick
        result[thread.name] = (cpu, int(status.get("voluntary_ctxt_switches", "0")))
    return result


def _flush() -> None:
    from opentelemetry import _logs, metrics, trace

    for provider in (
        trace.get_tracer_provider(),
        metrics.get_meter_provider(),
        _logs.get_logger_provider(),
    ):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


def main() -> None:
    scenario, n = sys.argv[1], int(sys.argv[2])
    os.environ["BENCH_SCENARIO"] = scenario
    from bench.app import build

    app = build()
    drops = _count_drops()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_drive(app, 2000))  # warm up: caches, first-use paths
    _flush()
    drops["dropped"] = 0
    threads0 = _thread_stats()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    loop.run_until_complete(_drive(app, n))
    _flush()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # System time and voluntary context switches (a thread blocking: mostly one waiting
    # for the GIL another thread took): what instruction counts do not show.
    system = usage.ru_stime - usage0.ru_stime
    switches = usage.ru_nvcsw - usage0.ru_nvcsw
    threads = {
        name: round(seconds - threads0.get(name, (0.0, 0))[0], 2)
        for name, (seconds, _) in _thread_stats().items()
    }
    thread_switches = {
        name: count - threads0.get(name, (0.0, 0))[1]
        for name, (_, count) in _thread_stats().items()
    }
    sys.__stderr__.write(
        json.dumps(
            {
                "scenario": scenario,
                "n": n,
                "cpu": cpu,
                "system": system,
                "switches": switches,
                "wall": wall,
                **drops,
                "threads": threads,
                "thread_switches": thread_switches,
            }
        )
        + "\n"
    )
    sys.__stderr__.flush()
    os._exit(0)  # everything is flushed; skip atexit shutdown hooks (not what we measure)


if __name__ == "__main__":
    main()
