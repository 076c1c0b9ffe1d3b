"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: threads, self and inclusive.

``python bench/profile_summary.py profile.raw [--top 30] [--match SUBSTRING]``
"""

from __future__ import annotations

import argparse
import collections
import re

_FRAME = re.compile(r"^(?P<func>[^(]*) \((?P<file>[^:)]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default=None, help="only stacks containing this")
    args = parser.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.path) as fh:
        lines = fh.readlines()
    for line in lines:
        stack, _, count_s = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        if args.match and args.match not in stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [_short(f) for f in frames[1:]] or [frames[0]]
        selfs[names[-1]] += count
        for name in set(names):
            incl[name] += count
    print(f"samples: {total}")
    for name, count in threads.most_common(10):
        print(f"  thread {count / total:6.1%}  {name}")
    print("\nself:")
    for name, count in selfs.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")
    print("\ninclusive:")
    for name, count in incl.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
