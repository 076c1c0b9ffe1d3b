"""An install where nothing compiles (no C compiler: a ``python:*-slim`` image) goes on pure
Python, as setup.py's optional extension promises, and that kiki-otel works: a request
answered with its id, its span, log record and metrics received over real OTLP. (The two
encoders' bytes are compared in the unit tests; here the install itself is the subject.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import REPO

pytestmark = pytest.mark.integration

APP = """
import importlib.util, json, sys
from fastapi import FastAPI
from starlette.testclient import TestClient
import kiki_otel
from kiki_otel import _otlp_encode

app = FastAPI()

@app.get("/plans/{plan_id}")
async def plan(plan_id: int):
    kiki_otel.get_logger("pure").info("plan.loaded", plan_id=plan_id)
    return {"plan_id": plan_id}

telemetry = kiki_otel.configure(app)
with TestClient(app) as client:
    response = client.get("/plans/7")
report = telemetry.shutdown()
print(json.dumps({
    "kiki_otel": kiki_otel.__file__,
    "speedups": importlib.util.find_spec("kiki_otel._speedups") is not None,
    "encoder": _otlp_encode.speedups is not None,
    "status": response.status_code,
    "request_id": response.headers["x-request-id"],
    "abandoned": report.abandoned,
}), file=sys.stderr)
"""


def _copy_project(to: Path) -> None:
    """The files an install reads (not the built module next to the sources here)."""
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, to / name)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(REPO / "kiki_otel", to / "kiki_otel", ignore=ignore)


def test_an_install_without_a_compiler_is_pure_python_and_works(tmp_path: Path) -> None:
    project, target = tmp_path / "project", tmp_path / "site"
    project.mkdir()
    _copy_project(project)
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*install, "--no-index", "--target", str(target), str(project)],
        env={**os.environ, "CC": "false"},  # every compiler call fails
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (target / "kiki_otel" / "__init__.py").exists()
    assert not list((target / "kiki_otel").glob("_speedups*.so"))  # nothing compiled

    # This interpreter's packages but not its editable kiki-otel (-S: no .pth files run)
    packages = sysconfig.get_paths()["purelib"]
    with OTLPReceiver() as rx:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([str(target), packages]),
            "OTEL_SERVICE_NAME": "pure-install",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
        ran = subprocess.run(
            [sys.executable, "-S", "-c", APP],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        result = json.loads(ran.stderr.strip().splitlines()[-1])
        assert result["kiki_otel"].startswith(str(target))
        assert not result["speedups"] and not result["encoder"]
        assert result["status"] == 200 and result["abandoned"] == []
        request_id = result["request_id"]
        (span,) = rx.wait_for_spans(1, trace_id=request_id)
        assert span.attributes["http.route"] == "/plans/{plan_id}"
        bodies = {r.body for r in rx.wait_for_logs(2, trace_id=request_id)}
        assert {"plan.loaded", "http.request"} <= bodies
        assert rx.wait_for_metrics("http.server.request.duration")
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == request_id for line in lines)
