"""Run uvicorn with a garbage-collector trace: every gen1 and full collection, with its pause.

``python bench/gc_trace.py bench.app:app --port 8011 --loop asyncio --http h11`` (any uvicorn
arguments), then load it (``wrk -c16 -d6s http://127.0.0.1:8011/items/1``). One line per
collection of generation 1 or 2 on stderr: generation, pause, objects collected, and the
running count of young (gen0) collections. Young collections run when tracked objects
*outlive* their allocation burst; objects alive at a gen1 collection are promoted, and
promotions trigger full collections of the whole heap (30-60 ms in the benchmark service).
That is how the two p99 causes in docs/performance-log.md (fourth round) were found.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

_started = [0.0]
_young = [0]


def _trace(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    generation = info["generation"]
    if generation == 0:
        _young[0] += 1
        return
    pause_ms = (time.perf_counter() - _started[0]) * 1e3
    sys.__stderr__.write(
        f"gc gen{generation} {pause_ms:.2f} ms collected={info['collected']} "
        f"young_so_far={_young[0]}\n"
    )
    sys.__stderr__.flush()


def main() -> None:
    sys.path.insert(0, ".")
    gc.callbacks.append(_trace)
    import uvicorn

    uvicorn.main(sys.argv[1:])


if __name__ == "__main__":
    main()
