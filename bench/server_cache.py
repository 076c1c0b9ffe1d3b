"""Instructions, L1 and L2 misses per request through a real uvicorn, counted by valgrind.

``.venv/bin/python bench/server_cache.py [--scenarios bare,kiki] [--server plain]
[--requests 2500] [--l2 1048576]``

``bench/instructions.py --cache`` counts in-process, where kiki adds about the same
instructions and L1 misses as it does through a server; but through uvicorn kiki costs
~1.5-2x its in-process CPU. This counts through the server: each scenario's uvicorn
(``bench.run``'s command, ``--loop``/``--http`` of the flavour) runs under ``valgrind
--tool=cachegrind --cache-sim=yes`` with the last-level cache set to this machine's L2
(``--l2`` bytes, 8-way, 64-byte lines; L1 as cachegrind finds it), serves ``WARMUP``
requests and then ``SMALL`` or ``SMALL + requests`` requests to 16 keep-alive clients (a
fixed-count client in this process: under valgrind the server is the bottleneck, so 16
requests stay in flight as under wrk), and is stopped with SIGINT. The difference of the
two runs over ``requests`` is per request, start-up and shutdown cancelled out; every thread
of the server is counted. The finding it was written for (docs/performance-log.md, "Twelfth
round"): the L2 misses kiki adds grow ~2.3x through a server, and they, not instructions or
L1 misses, are what a request costs more there.

``--functions N`` also lists the N functions whose L2 misses a request differ most from
bare's (every thread; sixteenth round: three quarters are data reads, a third of them in the
interpreter loop reading code objects, functions and module dicts gone cold).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.instructions import counting  # noqa: E402
from bench.run import SCENARIOS, SERVERS, fmt_table, free_port, server_command, stop_server  # noqa: E402

WARMUP = 300
SMALL = 500
CLIENTS = 16
_EVENTS = ("Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")


def _by_function(path: Path) -> dict[tuple[str, str], list[int]]:
    """Cachegrind's ``_EVENTS`` counts per (file, function) from its output file."""
    counts: dict[tuple[str, str], list[int]] = {}
    index: list[int] = []
    where = ("", "")
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
            index = [events.index(e) for e in _EVENTS]
        elif line.startswith("fl="):
            where = (line[3:], where[1])
        elif line.startswith("fn="):
            where = (where[0], line[3:])
        elif line[:1].isdigit():
            values = line.split()[1:]
            row = counts.setdefault(where, [0] * len(_EVENTS))
            for k, i in enumerate(index):
                if i < len(values):
                    row[k] += int(values[i])
    return counts


def _l2_by_function(small: Path, large: Path, requests: int) -> dict[str, float]:
    """L2 misses a request per function: the two runs' difference over ``requests``."""
    a, b = _by_function(small), _by_function(large)
    zero = [0] * len(_EVENTS)
    l2 = [_EVENTS.index(e) for e in ("ILmr", "DLmr", "DLmw")]
    return {
        f"{fn} ({Path(fl).name})": sum(b.get(key, zero)[i] - a.get(key, zero)[i] for i in l2)
        / requests
        for key in set(a) | set(b)
        for fl, fn in [key]
    }


def _serve(
    name: str, server: str, requests: int, endpoints: dict[str, str], out: Path, l2: int
) -> dict[str, int]:
    """Cachegrind's totals for one server run that serves ``WARMUP + requests`` requests."""
    port = free_port()
    server_cmd, env = server_command(name, server, endpoints, port)
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts every run
    target = out / f"{name.replace('%', 'pct')}.{server}.{requests}.cg"  # valgrind expands %
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={l2},8,64"]
    cmd += [f"--cachegrind-out-file={target}", *server_cmd]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        asyncio.run(_drive(port, requests))
    finally:
        stop_server(proc, 300)  # valgrind writes its counts on the way out
    events: list[str] = []
    for line in target.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            return dict(zip(events, map(int, line.split()[1:]), strict=False))
    raise SystemExit(f"no summary line in {target}")


async def _drive(port: int, requests: int) -> None:
    """``WARMUP`` then ``requests`` GETs over ``CLIENTS`` keep-alive connections."""
    for _ in range(1200):  # valgrind starts a server in ~10-60 s
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.25)
            continue
        writer.close()
        break
    else:
        raise SystemExit("the server under valgrind did not start in 5 minutes")
    request = f"GET /items/42 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    for total in (WARMUP, requests):
        left = [total]

        async def client(left: list[int] = left) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while left[0] > 0:
                left[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length is None:
                    raise SystemExit(f"unexpected response: {head!r}")
                await reader.readexactly(int(length.group(1)))
            writer.close()

        await asyncio.gather(*(client() for _ in range(CLIENTS)))


def count(names: list[str], server: str, requests: int, l2: int, functions: int = 0) -> None:
    per_request: dict[str, tuple[float, float, float]] = {}
    by_function: dict[str, dict[str, float]] = {}
    with counting(names) as (endpoints, tmp):
        for name in names:
            small = _serve(name, server, SMALL, endpoints, tmp, l2)
            large = _serve(name, server, SMALL + requests, endpoints, tmp, l2)
            if functions:
                stem = f"{name.replace('%', 'pct')}.{server}"
                by_function[name] = _l2_by_function(
                    tmp / f"{stem}.{SMALL}.cg", tmp / f"{stem}.{SMALL + requests}.cg", requests
                )
            delta = {e: (large.get(e, 0) - small.get(e, 0)) / requests for e in _EVENTS}
            l1 = delta["I1mr"] + delta["D1mr"] + delta["D1mw"]
            last = delta["ILmr"] + delta["DLmr"] + delta["DLmw"]
            per_request[name] = (delta["Ir"], l1, last)
            print(
                f"  {name}: {delta['Ir']:,.0f} instructions, {l1:,.0f} L1 and "
                f"{last:,.0f} L2 misses a request",
                flush=True,
            )
    bare = per_request.get("bare")
    rows = []
    for name, values in per_request.items():
        row = [name]
        for i, value in enumerate(values):
            row += [f"{value:,.0f}", f"{value - bare[i]:+,.0f}" if bare is not None else "-"]
        rows.append(row)
    head = ["scenario", "instructions", "over bare", "L1 misses", "over bare"]
    print(fmt_table(rows, [*head, f"L2 misses ({l2 // 1024} KiB)", "over bare"]))
    base = by_function.get("bare", {})
    for name, misses in by_function.items():
        if name == "bare":
            continue
        over = {fn: n - base.get(fn, 0.0) for fn, n in misses.items()}
        top = sorted(over, key=lambda fn: -abs(over[fn]))[:functions]
        print(f"\n{name}: L2 misses a request by function, over bare (every thread)")
        print(
            fmt_table(
                [[fn, f"{misses[fn]:,.1f}", f"{over[fn]:+,.1f}"] for fn in top],
                ["function", "L2 misses", "over bare"],
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenarios", default="bare,kiki")
    parser.add_argument("--server", choices=sorted(SERVERS), default="plain")
    parser.add_argument("--requests", type=int, default=2500)
    parser.add_argument("--l2", type=int, default=1 << 20, help="L2 bytes (this machine's: 1 MiB)")
    parser.add_argument(
        "--functions",
        type=int,
        default=0,
        metavar="N",
        help="also the N functions whose L2 misses differ most from bare's",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios: {unknown}; known: {sorted(SCENARIOS)}")
    count(names, args.server, args.requests, args.l2, args.functions)


if __name__ == "__main__":
    main()
