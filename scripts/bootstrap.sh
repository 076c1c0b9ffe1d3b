#!/usr/bin/env bash
# Set up everything the demo and the tests need on a fresh Debian machine, idempotently:
#   - Debian packages: python3-venv (for .venv), redis-server, postgresql (real dependencies for
#     health tests), wrk (benchmarks)
#   - .venv with kiki-otel installed editable (its C encoder built in place), with its dev extras
# Fast when everything is already there. Progress goes to stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[%s] bootstrap: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

need_apt=()
# Debian's python3 comes without ensurepip: `python3 -m venv` needs python3-venv.
[[ -x .venv/bin/python ]] || python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v redis-server >/dev/null || need_apt+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
command -v wrk >/dev/null || need_apt+=(wrk)
if ((${#need_apt[@]})); then
  if ! command -v apt-get >/dev/null; then
    log "not a Debian-like machine: install ${need_apt[*]} yourself (or their equivalents), then run again"
    exit 1
  fi
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  log "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package starts system services; the tests start their own on free ports.
  for svc in redis-server postgresql; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
fi

if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.kiki-otel-installed
# setup.py or the C encoder changed: reinstall, which rebuilds kiki_otel/_speedups*.so in place.
if [[ ! -f $stamp || pyproject.toml -nt $stamp || setup.py -nt $stamp || kiki_otel/_speedups.c -nt $stamp ]]; then
  log "installing kiki-otel[dev] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
log "ready"
