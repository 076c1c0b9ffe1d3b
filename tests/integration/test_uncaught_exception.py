"""A script or worker that dies of an uncaught exception says why, as JSON and over OTLP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OTLPReceiver, ReceivedLog
from tests.support.server_process import REPO

pytestmark = pytest.mark.integration

CRASH = """
import threading, kiki_otel
telemetry = kiki_otel.configure()
log = kiki_otel.get_logger("worker")

def side_job():
    raise ValueError("side job failed")

thread = threading.Thread(target=side_job, name="side-job")
thread.start()
thread.join()
with telemetry.tracer("worker").start_as_current_span("job"):
    log.info("job.started")
    raise RuntimeError("worker crashed: db gone")
"""


def _run(
    tmp_path: Path, rx: OTLPReceiver, service: str, code: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "crash.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KIKI_OTEL_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_BLRP_SCHEDULE_DELAY": "60000",  # only the atexit flush sends it
        }
    )
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_crashing_worker_logs_and_exports_why(tmp_path: Path) -> None:
    """The uncaught exception (and one that ended a thread) is an error line on stdout and
    an ERROR record at the collector, traceback included, before the atexit flush; Python's
    own traceback still goes to stderr and the exit status is still 1."""
    with OTLPReceiver() as rx:
        proc = _run(tmp_path, rx, "crasher", CRASH)
        assert proc.returncode == 1, proc.stderr
        assert "RuntimeError: worker crashed: db gone" in proc.stderr
        lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
        crashes = [l for l in lines if l["event"] == "uncaught_exception"]
        assert [c["exception"]["message"] for c in crashes] == [
            "side job failed",
            "worker crashed: db gone",
        ]
        assert crashes[0]["thread.name"] == "side-job" and crashes[1]["level"] == "error"
        events = [l["event"] for l in lines]
        assert events.index("uncaught_exception") < events.index("shutdown.started")

        def arrived() -> list[ReceivedLog]:
            return [r for r in rx.logs() if r.body == "uncaught_exception"]

        rx.wait_for(lambda: len(arrived()) == 2)
        by_message = {r.attributes["exception.message"]: r for r in arrived()}
        crash = by_message["worker crashed: db gone"]
        assert crash.severity_text == "ERROR" and crash.resource["service.name"] == "crasher"
        assert crash.attributes["exception.type"] == "RuntimeError"
        assert "Traceback" in str(crash.attributes["exception.stacktrace"])
        assert by_message["side job failed"].attributes["thread.name"] == "side-job"


def test_ctrl_c_stays_pythons(tmp_path: Path) -> None:
    """A KeyboardInterrupt ends the script as before (killed by SIGINT, Python's traceback):
    no error line, no error record."""
    code = "import kiki_otel\nkiki_otel.configure()\nraise KeyboardInterrupt\n"
    with OTLPReceiver() as rx:
        proc = _run(tmp_path, rx, "interrupted", code)
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in proc.stderr
        assert "uncaught_exception" not in proc.stdout
        rx.wait_for(lambda: any(r.body == "shutdown.completed" for r in rx.logs()))
        assert not [r for r in rx.logs() if r.body == "uncaught_exception"]
