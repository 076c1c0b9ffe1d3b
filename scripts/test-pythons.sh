#!/usr/bin/env bash
# The unit and integration tests again under the other CPythons kiki-otel supports (3.12, 3.13),
# each that this machine has (python3.X on PATH, or a pyenv version). kiki's C module has code
# paths per version (the awaitable protocol's SEND on 3.12+, C API names that changed in 3.13)
# that only a run on that version executes. A version not found is reported and skipped.
# Each gets .venv-3.X (created once, kiki-otel[dev] installed editable: its own C build in
# place). Run scripts/test.sh first on a fresh machine: it installs the Debian packages.
# Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[%s] test-pythons: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# An interpreter that runs and is that version (a pyenv shim on PATH fails for a version
# that is installed but not selected: the pyenv install itself is tried next).
find_python() {
  local version=$1 found
  for found in $(command -v "python$version") \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
    if [[ -x $found ]] && [[ $("$found" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
        2>/dev/null) == "$version" ]]; then
      echo "$found"
      return 0
    fi
  done
  return 1
}

failed=()
for version in 3.12 3.13; do
  if ! python=$(find_python "$version"); then
    log "CPython $version not found: skipped"
    continue
  fi
  venv=.venv-$version
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  stamp=$venv/.kiki-otel-installed
  if [[ ! -f $stamp || pyproject.toml -nt $stamp || setup.py -nt $stamp || kiki_otel/_speedups.c -nt $stamp ]]; then
    log "installing kiki-otel[dev] into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
  fi
  "$venv/bin/python" -c "import kiki_otel._speedups" # the C module built: its paths are the point
  log "pytest on $("$venv/bin/python" -V) (not e2e: the stack's configs do not depend on it)"
  "$venv/bin/python" -X faulthandler -m pytest -q -p no:cacheprovider -m "not e2e" "$@" \
    || failed+=("$version")
done
if ((${#failed[@]})); then
  log "failed on CPython ${failed[*]}"
  exit 1
fi
