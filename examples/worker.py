"""A background worker (no web app): the same telemetry, flushed before the process exits.

    OTEL_SERVICE_NAME=plan-worker python -m examples.worker 5

Without an app, ``configure()`` still sets up traces, metrics and logs; the worker marks each
job with a span (its trace id is the job's id in the logs) and calls ``telemetry.shutdown()``
at the end. SIGTERM is turned into a normal exit so the same flush runs (uvicorn does this
for web apps; a plain script must ask for it).
"""

from __future__ import annotations

import signal
import sys
import time

import kiki_otel

telemetry = kiki_otel.configure()
log = kiki_otel.get_logger("worker")
tracer = telemetry.tracer("examples.worker")
jobs = telemetry.meter("examples.worker").create_counter("worker.jobs", unit="{job}")


def process(job_id: int) -> None:
    """One unit of work in its own trace."""
    with tracer.start_as_current_span("process plan", attributes={"plan.id": job_id}):
        log.info("plan.processed", plan_id=job_id)
        jobs.add(1, {"outcome": "ok"})
        time.sleep(0.01)


def main(count: int) -> None:
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        for job_id in range(count):
            process(job_id)
    finally:
        report = telemetry.shutdown()
        print(f"flushed: clean={report.clean} flush_s={report.flush_s:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
