"""FastAPI without native telemetry (0.115, Starlette 0.46): the same one-span, request-id
and metrics behaviour under a real uvicorn, over real OTLP.

The old FastAPI is installed (once, cached per version in the user cache) into its own
directory that is put first on the subprocess' PYTHONPATH; everything else comes from the
project's venv, exactly as a service pinned to an older FastAPI would run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.otlp_receiver import OTLPReceiver
from tests.support.server_process import REPO, ServerProcess

pytestmark = pytest.mark.integration

OLD = ("fastapi==0.115.14", "starlette==0.46.2")


def old_fastapi_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    target = cache / "kiki-otel" / "pydeps" / "-".join(p.replace("==", "-") for p in OLD)
    if not (target / "fastapi").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                *OLD,
            ],
            check=True,
            timeout=300,
        )
    return target


def test_old_fastapi_without_native_telemetry() -> None:
    """fastapi 0.115 (no fastapi.telemetry): one server span per request named by route,
    X-Request-ID = its trace id, stable metrics, 500 path still answered with the id."""
    target = old_fastapi_dir()
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fastapi, importlib.util as u; "
            "print(fastapi.__version__, u.find_spec('fastapi.telemetry') is None)",
        ],
        env={**os.environ, "PYTHONPATH": f"{target}:{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["0.115.14", "True"]
    with OTLPReceiver() as rx:
        env = {
            "PYTHONPATH": f"{target}:{REPO}",
            "OTEL_SERVICE_NAME": "demo-old-fastapi",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
        with ServerProcess(env=env) as server:
            server.wait_ready()
            ok = httpx.get(server.url + "/plans/4")
            boom = httpx.get(server.url + "/boom")
            assert ok.status_code == 200 and boom.status_code == 500
            for response, route in ((ok, "/plans/{plan_id}"), (boom, "/boom")):
                request_id = response.headers["x-request-id"]
                spans = rx.wait_for_spans(1, trace_id=request_id)
                assert [s.kind for s in spans] == ["SERVER"]
                assert spans[0].name == f"GET {route}"
            assert rx.wait_for(
                lambda: [
                    m
                    for m in rx.metrics("http.server.request.duration")
                    if m.attributes.get("http.route") == "/plans/{plan_id}"
                ]
            )
