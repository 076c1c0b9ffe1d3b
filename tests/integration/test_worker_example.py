"""examples/worker.py: a non-ASGI program exports every job's span, log and metric on exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import REPO

pytestmark = pytest.mark.integration


def test_worker_example_flushes_everything_before_exit() -> None:
    """Five jobs: five spans, their correlated log records and the job counter arrive, although
    the batch delays are long, because the worker calls shutdown() at the end."""
    with OTLPReceiver() as rx:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KIKI_OTEL_"))}
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "OTEL_SERVICE_NAME": "plan-worker",
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "60000",
                "OTEL_BLRP_SCHEDULE_DELAY": "60000",
            }
        )
        proc = subprocess.run(
            [sys.executable, "-m", "examples.worker", "5"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "clean=True" in proc.stderr
        spans = rx.wait_for_spans(5, name="process plan")
        for span in spans:
            (record,) = [r for r in rx.logs(trace_id=span.trace_id) if r.body == "plan.processed"]
            assert record.span_id == span.span_id
        jobs = rx.wait_for_metrics("worker.jobs")
        assert jobs[-1].value == 5
