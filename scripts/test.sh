#!/usr/bin/env bash
# The whole test suite, from a fresh machine: bootstrap (Debian packages, .venv), build or reuse the
# cached Go-built collector/Jaeger/Prometheus (stack/build.sh), then ruff, mypy --strict and pytest
# (unit, integration with real uvicorn/gunicorn/Redis/PostgreSQL, and the e2e stack tests).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e" -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
# Go builds the stack; find the usual install places if a minimal environment lost them.
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
echo "== stack binaries (cached under ${XDG_CACHE_HOME:-$HOME/.cache}/kiki-otel)" >&2
KIKI_STACK_BIN=$(bash stack/build.sh | tail -1)
export KIKI_STACK_BIN
echo "== ruff" >&2
.venv/bin/ruff check kiki_otel tests examples bench
.venv/bin/ruff format --check kiki_otel tests examples bench
echo "== mypy --strict" >&2
.venv/bin/mypy --strict kiki_otel
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
