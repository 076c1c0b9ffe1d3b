"""What a log line costs while the collector hangs: before and after the export queue fills.

``.venv/bin/python -m bench.queue_full`` logs through kiki's chain (JSON line to /dev/null,
OTel record to a receiver that never answers) and prints microseconds per line while the
log queue (2,048) still has room and once it is full (each further record is dropped), and
their ratio. A dead or slow collector must not make the service slower: a dropped record
should cost no more than a queued one.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    from tests.support.otlp_receiver import OTLPReceiver

    receiver = OTLPReceiver(mode="hang").start()
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_TIMEOUT="30000",  # the worker stays stuck in its first export
    )
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
    import kiki_otel

    telemetry = kiki_otel.configure(service_name="bench-queue-full")
    log = kiki_otel.get_logger("bench")

    def per_line(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            log.info("bench.line", i=i)
        return (time.perf_counter() - start) / n * 1e6

    room = per_line(1500)  # the queue holds 2,048: still room
    per_line(1000)  # now it is full
    full = per_line(3000)
    sys.stdout = sys.__stdout__
    print(f"us/line, queue with room: {room:.1f}; queue full: {full:.1f}; ratio {full / room:.2f}")
    telemetry.shutdown(1.0)
    receiver.stop()


if __name__ == "__main__":
    main()
