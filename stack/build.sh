#!/usr/bin/env bash
# Build (and cache) the observability stack's binaries from Go modules, at the versions pinned in .env:
#   otelcol-kiki  the collector, from collector-config/builder-config.yaml with the OpenTelemetry Collector
#                 Builder (ocb) pinned in stack/collector/go.mod
#   jaeger        Jaeger v2 all-in-one, tool of the module stack/jaeger/
#   prometheus    Prometheus v3 (-tags remove_all_sd), tool of the module stack/prometheus/
#   promtool      likewise
# Output goes only to ${XDG_CACHE_HOME:-$HOME/.cache}/kiki-otel/stack-<hash>/bin/, where <hash> covers the
# pinned versions, the manifest, the Go module files and the Go version: a change rebuilds, nothing else does.
# Progress goes to stderr with timestamps; the bin dir is the last line of stdout:
#   BIN=$(stack/build.sh | tail -1)
# Options: --print-dir  print the bin dir (for these inputs) and exit without building.
#          --force      rebuild even if cached.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE="$ROOT/.env"
MANIFEST="$ROOT/collector-config/builder-config.yaml"
START=$SECONDS

log() { printf '[%s +%4ss] stack/build.sh: %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Read KEY from .env without executing the file (KEY=value lines, comments allowed).
env_get() {
  local value
  value=$(sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ENV_FILE" | tail -1 | sed 's/[[:space:]]*$//; s/^"\(.*\)"$/\1/')
  [[ -n $value ]] || die "$1 is not set in $ENV_FILE"
  printf '%s' "$value"
}

PRINT_DIR=0
FORCE=0
for arg in "$@"; do
  case $arg in
    --print-dir) PRINT_DIR=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

command -v go >/dev/null || die "go is not on PATH (Go >= 1.26 is needed)"
[[ -f $ENV_FILE ]] || die "missing $ENV_FILE"
[[ -f $MANIFEST ]] || die "missing $MANIFEST"

OTELCOL_VERSION=$(env_get OTELCOL_VERSION)
OTELCOL_STABLE_GO_VERSION=$(env_get OTELCOL_STABLE_GO_VERSION)
JAEGER_GO_VERSION=$(env_get JAEGER_GO_VERSION)
PROMETHEUS_GO_VERSION=$(env_get PROMETHEUS_GO_VERSION)

# The manifest names its module versions itself (so users can run ocb on it directly); they must all be the
# collector release pinned in .env.
check_manifest_versions() {
  local bad
  bad=$(grep -E '^[[:space:]]*-?[[:space:]]*gomod:' "$MANIFEST" \
    | grep -vE " (v$OTELCOL_VERSION|$OTELCOL_STABLE_GO_VERSION)[[:space:]]*$" || true)
  [[ -z $bad ]] || die "collector-config/builder-config.yaml has modules not at v$OTELCOL_VERSION/$OTELCOL_STABLE_GO_VERSION (.env):
$bad"
}
check_manifest_versions

# Make the module in stack/<dir> require MODULE at VERSION as a tool (only changes go.mod/go.sum when .env
# names another version than the committed files: commit them afterwards).
ensure_tool_version() {
  local dir=$1 module=$2 version=$3 tool_pkg=$4 have
  have=$(cd "$ROOT/stack/$dir" && go list -m -f '{{.Version}}' "$module" 2>/dev/null || true)
  if [[ $have != "$version" ]]; then
    log "stack/$dir: $module is '${have:-absent}', .env pins $version: go get -tool (commit stack/$dir/go.mod go.sum)"
    (cd "$ROOT/stack/$dir" && go get -tool "$tool_pkg@$version") >&2 || die "go get -tool $tool_pkg@$version failed"
  fi
}

ensure_tool_version jaeger github.com/jaegertracing/jaeger "$JAEGER_GO_VERSION" github.com/jaegertracing/jaeger/cmd/jaeger
ensure_tool_version prometheus github.com/prometheus/prometheus "$PROMETHEUS_GO_VERSION" github.com/prometheus/prometheus/cmd/prometheus
ensure_tool_version collector go.opentelemetry.io/collector/cmd/builder "v$OTELCOL_VERSION" go.opentelemetry.io/collector/cmd/builder

GO_VERSION=$(go env GOVERSION)
GOARCH=$(go env GOOS)-$(go env GOARCH)
HASH=$(
  {
    printf 'otelcol=%s stable=%s jaeger=%s prometheus=%s go=%s arch=%s\n' \
      "$OTELCOL_VERSION" "$OTELCOL_STABLE_GO_VERSION" "$JAEGER_GO_VERSION" "$PROMETHEUS_GO_VERSION" "$GO_VERSION" "$GOARCH"
    cat "$MANIFEST"
    for mod in collector jaeger prometheus; do cat "$ROOT/stack/$mod/go.mod" "$ROOT/stack/$mod/go.sum"; done
  } | sha256sum | cut -c1-16
)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kiki-otel"
STACK_DIR="$CACHE_ROOT/stack-$HASH"
BIN="$STACK_DIR/bin"

if [[ $PRINT_DIR == 1 ]]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN" "$STACK_DIR/work"
# One build per cache dir at a time (parallel test runs or CI jobs on the same machine).
exec 9>"$STACK_DIR/.lock"
if ! flock -n 9; then
  log "another stack/build.sh is building $STACK_DIR: waiting for it ..."
  flock 9
fi
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"
export CGO_ENABLED=0
LDFLAGS="-s -w"

# build NAME DIR PKG [TAGS]: go build a tool of the module in stack/DIR into the bin dir.
build_tool() {
  local name=$1 dir=$2 pkg=$3 tags=${4:-} t0=$SECONDS
  if [[ -x $BIN/$name && $FORCE == 0 ]]; then
    log "$name: cached ($BIN/$name)"
    return 0
  fi
  log "$name: building $pkg${tags:+ (tags: $tags)} ..."
  (cd "$ROOT/stack/$dir" && go build ${tags:+-tags "$tags"} -ldflags="$LDFLAGS" -o "$BIN/$name.tmp" "$pkg") >&2 \
    || die "$name: go build failed"
  mv "$BIN/$name.tmp" "$BIN/$name"
  log "$name: built in $((SECONDS - t0))s ($(du -h "$BIN/$name" | cut -f1))"
}

build_collector() {
  local t0=$SECONDS src="$STACK_DIR/work/otelcol-kiki" manifest="$STACK_DIR/work/builder-config.yaml"
  if [[ -x $BIN/otelcol-kiki && $FORCE == 0 ]]; then
    log "otelcol-kiki: cached ($BIN/otelcol-kiki)"
    return 0
  fi
  log "ocb: building the OpenTelemetry Collector Builder (stack/collector/go.mod) ..."
  (cd "$ROOT/stack/collector" && go build -o "$STACK_DIR/work/ocb" go.opentelemetry.io/collector/cmd/builder) >&2 \
    || die "ocb: go build failed"
  # A copy of the manifest whose output_path points into the cache: build output never lands in the repo.
  sed "s#^\([[:space:]]*output_path:\).*#\1 $src#" "$MANIFEST" >"$manifest"
  grep -q "output_path: $src" "$manifest" || die "could not set dist.output_path in the manifest copy"
  log "otelcol-kiki: generating and compiling with ocb (go get, go mod tidy, go build) ..."
  "$STACK_DIR/work/ocb" --config "$manifest" --ldflags="$LDFLAGS" >&2 || die "otelcol-kiki: ocb failed"
  cp "$src/otelcol-kiki" "$BIN/otelcol-kiki.tmp" && mv "$BIN/otelcol-kiki.tmp" "$BIN/otelcol-kiki"
  log "otelcol-kiki: built in $((SECONDS - t0))s ($(du -h "$BIN/otelcol-kiki" | cut -f1))"
}


log "cache: $STACK_DIR (otelcol $OTELCOL_VERSION, jaeger $JAEGER_GO_VERSION, prometheus $PROMETHEUS_GO_VERSION, $GO_VERSION)"
# promtool first: it is the quickest and the static tests need it.
build_tool promtool prometheus github.com/prometheus/prometheus/cmd/promtool remove_all_sd
build_tool prometheus prometheus github.com/prometheus/prometheus/cmd/prometheus remove_all_sd
build_collector
build_tool jaeger jaeger github.com/jaegertracing/jaeger/cmd/jaeger

for name in otelcol-kiki jaeger prometheus promtool; do
  [[ -x $BIN/$name ]] || die "$name missing from $BIN"
done
log "done in $((SECONDS - START))s"
echo "$BIN"
