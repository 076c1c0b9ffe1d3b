#!/usr/bin/env bash
# Set up and run the demo service on http://127.0.0.1:8000 with telemetry to $OTEL_EXPORTER_OTLP_ENDPOINT
# (default http://localhost:4318; it starts and logs JSON even when no collector listens there).
# Try: curl -i localhost:8000/plans/7   curl localhost:8000/health   curl -i localhost:8000/boom
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export OTEL_SERVICE_NAME=${OTEL_SERVICE_NAME:-kiki-demo}
exec .venv/bin/uvicorn examples.demo.app:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
