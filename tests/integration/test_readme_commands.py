"""The README's two commands stay true: the demo command starts a serving, JSON-logging service
with no collector running, and CI runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import httpx
import pytest

from tests.support.server_process import REPO, free_port

pytestmark = pytest.mark.integration


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```bash\n(.+?)\n```", section, re.S)
    assert match, f"no bash block under '## {heading}'"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run executes the command README.md gives under 'Test it' (and stops on its
    failure: before the other CPythons' run, under ``set -e``)."""
    command = readme_block("Test it")
    assert command == "./scripts/test.sh"
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^(exec )?bash scripts/test\.sh\s*$", ci, re.M)
    assert re.search(r"^set -euo pipefail$", ci, re.M)


def test_readme_demo_command_serves_without_a_collector() -> None:
    """`./scripts/demo.sh` (the README's main job) serves with nothing listening on the OTLP
    endpoint, answers X-Request-ID, prints JSON logs and shuts down cleanly on SIGTERM (uvicorn
    re-raises the signal after its graceful shutdown, so "cleanly" is 0 or -SIGTERM)."""
    command = readme_block("Run it")
    assert command == "./scripts/demo.sh"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KIKI_OTEL_"))}
    env.update(
        {"PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "demo.sh")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/plans/7", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert response is not None and response.status_code == 200
        assert len(response.headers["x-request-id"]) == 32
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    request_id = response.headers["x-request-id"]
    assert f'"request_id":"{request_id}"' in out
    assert '"event":"shutdown.completed"' in out
    assert '"event":"Application shutdown complete."' in out
