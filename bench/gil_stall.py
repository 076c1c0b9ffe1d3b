"""How long an exporter thread's encoding stalls the event loop's thread (the p99 tail).

``python -m bench.gil_stall [SECONDS]``: one thread encodes 512-span batches back to back
(with the fast encoder, as the batch span processor's worker does under load) while the
main thread runs ~100 us chunks of Python; prints the chunk duration percentiles. Without
GIL hand-overs a chunk waits whole switch intervals (5 ms) at p99.
"""

from __future__ import annotations

import sys
import threading
import time

from kiki_otel._otlp_encode import encode_spans
from tests.test_otlp_encode import _spans


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    spans = (_spans() * 60)[:512]
    stop = threading.Event()

    def export_loop() -> None:
        while not stop.is_set():
            encode_spans(spans)
            time.sleep(0.002)

    worker = threading.Thread(target=export_loop)
    worker.start()
    chunks: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        total = 0
        for i in range(2000):
            total += i
        chunks.append((time.perf_counter() - started) * 1e6)
    stop.set()
    worker.join()
    chunks.sort()

    def pct(p: float) -> float:
        return chunks[min(len(chunks) - 1, int(len(chunks) * p))]

    print(
        f"chunks={len(chunks)} p50={pct(0.5):.0f}us p99={pct(0.99):.0f}us "
        f"p99.9={pct(0.999):.0f}us max={chunks[-1]:.0f}us"
    )


if __name__ == "__main__":
    main()
