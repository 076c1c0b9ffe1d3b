"""Instructions per request, counted by valgrind: a cost that a noisy neighbour cannot move.

``.venv/bin/python bench/instructions.py [--scenarios bare,kiki,...] [--requests 1000]``

Timings on a shared VM move by +-20% from one minute to the next; the number of machine
instructions a request executes does not. Each scenario (``bench.run`` names) runs
``bench.inprocess`` twice under ``valgrind --tool=cachegrind``, with ``SMALL`` and with
``SMALL + requests`` requests; the difference divided by ``requests`` is the instructions
per request after start-up and warm-up, every thread counted (exporters included; OTLP goes
to a discard receiver). The table gives each scenario's count, its overhead over ``bare``
and the ratio. Instructions are not time (cache misses, syscalls and GIL hand-overs are not
in them), so this complements ``bench/run.py``; it is the number to compare two trees by.

``--threads`` counts with ``valgrind --tool=callgrind --separate-threads=yes`` instead and
splits each count into the request thread's and the other threads' (the exporters'): the
export threads' partial batches move a whole-process count by ~5k from run to run, the
request thread's much less.

``--cache`` runs cachegrind's cache model too (its L1: 32 KiB instructions, 32 KiB data)
and adds the L1 misses a request (instruction reads and data reads; the model below was
fitted on those). On this VM
they explain what instructions alone do not: kiki's added instructions ran ~3x slower
than bare's, and a model of ~0.09 ns an instruction plus ~3 ns an L1 miss fits bare,
kiki, kiki's skeleton and a synthetic loop (docs/performance-log.md, "Tenth round"). Code
run once per request, spread over many functions, misses where a loop does not.

A scenario may carry settings: ``kiki-10%+KIKI_OTEL_HTTP__ACCESS_LOG=false`` is
``kiki-10%`` without its access line, so a run with and without one part counts that part
(docs/performance-log.md, "Seventeenth round").

``--functions SCENARIO`` shows where a scenario's request thread spends them instead:
Python bytecodes executed per request, by function (``sys.settrace`` with opcode events,
deterministic too), the top ``--top`` of them. Needs no valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import PY, SCENARIOS, fmt_table, start_receiver  # noqa: E402

SMALL = 500
"""Requests of the shorter run (after ``bench.inprocess``'s own 2,000 warm-up requests)."""


def _variant(name: str) -> tuple[str, dict[str, str]]:
    """A scenario name with ``+KEY=VALUE`` settings after it: its ``bench.run`` name and them.

    ``kiki-10%+KIKI_OTEL_HTTP__ACCESS_LOG=false`` is ``kiki-10%`` without the access line:
    one part of a scenario switched off, to count what it costs.
    """
    base, *settings = name.split("+")
    if base not in SCENARIOS or not all("=" in kv for kv in settings):
        known = ", ".join(SCENARIOS)
        raise SystemExit(f"unknown scenario {name!r}: one of {known}, then any +KEY=VALUE")
    return base, dict(kv.split("=", 1) for kv in settings)


def _env(name: str, endpoints: dict[str, str]) -> dict[str, str]:
    base, settings = _variant(name)
    scenario, extra, collector = SCENARIOS[base]
    extra = {**extra, **settings}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KIKI_OTEL_"))}
    env.update({"PYTHONPATH": str(REPO), "BENCH_SCENARIO": scenario, **extra})
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts (probe counts) every run
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoints[collector]
    return env


def _instructions(
    name: str, requests: int, endpoints: dict[str, str], out: Path, threads: bool, cache: bool
) -> tuple[int, int, int]:
    """Instructions (``Ir``) of one ``bench.inprocess`` run: (request thread, other threads,
    L1 misses of the whole process, 0 without ``cache``).

    Without ``threads`` (cachegrind) the whole process is the first number, the second 0.
    """
    scenario = SCENARIOS[_variant(name)[0]][0]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    target = out / f"{label}.{requests}.cg"  # valgrind expands %
    tool = "callgrind" if threads else "cachegrind"
    cmd = ["valgrind", f"--tool={tool}", f"--{tool}-out-file={target}"]
    if threads:
        cmd += ["--separate-threads=yes", "--dump-instr=no"]
    else:
        cmd += [f"--cache-sim={'yes' if cache else 'no'}"]
    cmd += [PY, "-m", "bench.inprocess", scenario]
    subprocess.run(
        [*cmd, str(requests)],
        env=_env(name, endpoints),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    # callgrind writes one file per thread, "<target>-01" being the main (request) thread
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(out.glob(target.name + "*")):
        events: list[str] = []
        for line in path.read_text().splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                counts[path.name] = dict(zip(events, map(int, line.split()[1:]), strict=False))
                break
    if not counts:
        raise SystemExit(f"no summary line in {target}*")
    whole = counts.get(target.name, {})  # cachegrind's one file (callgrind: none)
    main = counts.get(f"{target.name}-01", {}).get("Ir", 0) if threads else whole["Ir"]
    misses = sum(whole.get(event, 0) for event in ("I1mr", "D1mr"))
    return main, sum(c.get("Ir", 0) for c in counts.values()) - main, misses


@contextlib.contextmanager
def counting(names: list[str]) -> Iterator[tuple[dict[str, str], Path]]:
    """What counting ``names`` under valgrind needs: the OTLP endpoints of a discard
    receiver (running until the block ends) and a scratch directory."""
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    receiver, urls = start_receiver("ok", os.environ.get("BENCH_RECEIVER_CPU", "1"))
    endpoints = {"ok": urls["http"], "ok-grpc": urls["grpc"]}
    try:
        for name in names:
            if SCENARIOS[_variant(name)[0]][2] not in endpoints:
                raise SystemExit(f"{name}: needs a dead collector, not counted here")
        with tempfile.TemporaryDirectory() as tmp:
            yield endpoints, Path(tmp)
    finally:
        receiver.terminate()
        receiver.wait()


def count(names: list[str], requests: int, threads: bool = False, cache: bool = False) -> None:
    per_request: dict[str, tuple[float, float, float]] = {}
    with counting(names) as (endpoints, tmp):
        for name in names:
            small = _instructions(name, SMALL, endpoints, tmp, threads, cache)
            large = _instructions(name, SMALL + requests, endpoints, tmp, threads, cache)
            main, rest, misses = ((b - a) / requests for a, b in zip(small, large, strict=True))
            per_request[name] = (main, rest, misses)
            split = f" (request thread {main:,.0f}, others {rest:,.0f})" if threads else ""
            split += f", {misses:,.0f} L1 misses" if cache else ""
            print(f"  {name}: {main + rest:,.0f} instructions/request{split}", flush=True)
    bare = per_request.get("bare")
    rows = []
    for name, (main, rest, misses) in per_request.items():
        value = main + rest
        over = f"{value - bare[0] - bare[1]:+,.0f}" if bare is not None else "-"
        ratio = f"{value / (bare[0] + bare[1]):.2f}x" if bare else "-"
        split = [f"{main:,.0f}", f"{rest:,.0f}"] if threads else []
        if cache:
            split += [f"{misses:,.0f}", f"{misses - bare[2]:+,.0f}" if bare is not None else "-"]
        rows.append([name, f"{value:,.0f}", *split, over, ratio])
    head = ["scenario", "instructions/request"]
    head += ["request thread", "other threads"] if threads else []
    head += ["L1 misses/request", "L1 misses over bare"] if cache else []
    print(fmt_table(rows, [*head, "over bare", "ratio to bare"]))


def functions(name: str, requests: int, top: int) -> None:
    """Bytecodes per request by function on the request thread, in this process."""
    from bench.inprocess import _drive

    receiver, urls = start_receiver("ok", os.environ.get("BENCH_RECEIVER_CPU", "1"))
    try:
        os.environ.update(_env(name, {"ok": urls["http"], "ok-grpc": urls["grpc"]}))
        real_stdout, sys.stdout = sys.stdout, io.TextIOWrapper(io.BytesIO(), write_through=True)
        from bench.app import app  # built for BENCH_SCENARIO on import

        loop = asyncio.new_event_loop()
        loop.run_until_complete(_drive(app, 2000))  # warm up: caches, first-use paths
        counts: collections.Counter[tuple[str, int, str]] = collections.Counter()

        def trace(frame, event, arg):  # type: ignore[no-untyped-def]
            code = frame.f_code
            where = (code.co_filename, code.co_firstlineno, code.co_name)
            frame.f_trace_opcodes, frame.f_trace_lines = True, False

            def opcode(frame, event, arg):  # type: ignore[no-untyped-def]
                if event == "opcode":
                    counts[where] += 1
                return opcode

            return opcode

        sys.settrace(trace)
        try:
            loop.run_until_complete(_drive(app, requests))
        finally:
            sys.settrace(None)
            sys.stdout = real_stdout
    finally:
        receiver.terminate()
        receiver.wait()
    total = sum(counts.values())
    print(f"{name}: {total / requests:,.0f} bytecodes/request on the request thread")
    rows = []
    for (filename, line, function), n in counts.most_common(top):
        short = filename.split("site-packages/")[-1].replace(str(REPO) + "/", "")
        rows.append([f"{n / requests:,.1f}", f"{short}:{line}", function])
    print(fmt_table(rows, ["per request", "where", "function"]))
    os._exit(0)  # skip the exporters' shutdown flush: not what is measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="bare,kiki,kiki-10%,kiki-official,native,contrib")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--functions", metavar="SCENARIO", help="bytecodes by function instead")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--threads", action="store_true", help="callgrind, split by thread")
    parser.add_argument("--cache", action="store_true", help="L1 misses too (cachegrind model)")
    args = parser.parse_args()
    if args.functions:
        functions(args.functions, args.requests, args.top)
        return
    names = [s for s in args.scenarios.split(",") if s]
    for name in names:
        _variant(name)  # exits on an unknown one
    if args.cache and args.threads:
        raise SystemExit("--cache counts the whole process: not with --threads")
    count(names, args.requests, args.threads, args.cache)


if __name__ == "__main__":
    main()
