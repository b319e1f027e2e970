#!/usr/bin/env bash
# wsedge soak: leaks under long load, on this host, loopback only.
#
#   scripts/soak.sh MINUTES [--no-build] [--out DIR]
#   scripts/soak.sh --smoke [--no-build] [--out DIR]     (~20 s once built, for CI)
#
# Builds release (wsedge, wsedge-bench), starts the echo origin and wsedge (2 workers, access
# log off, a "buffered" route and a "frames" route), then for MINUTES runs at the same time:
#   - churn: 200 new WebSocket connections/s from 127.0.0.2..127.0.0.254, each upgrading,
#     exchanging 3 checked echoes and closing (close handshake), alternating routes;
#   - steady: 200 long-lived connections (half per route) each sending 5 numbered msg/s and
#     checking every echo arrives, in order, exactly once.
# wsedge's fd count and RSS are sampled every 5 s (before, during and after the load) into
# samples.csv. Writes target/soak/<UTC date-time>/: samples.csv, summary.json (load counters),
# soak.md (table and verdict), soak.png (fds and RSS over time), logs/.
#
# Fails (exit 1) if any message is lost, reordered, duplicated or corrupt, if any churn session
# or long-lived connection fails, if wsedge dies, if wsedge's fds are not back to the idle
# baseline once the load stopped, or (full runs) if fds or RSS grow after warm-up: the mean of
# the last quarter of the samples under load against the mean of the second quarter, fds by
# more than 20, RSS by more than 10 % + 4 MiB.
# --smoke: 12 s of load at 100 connections/s and 50 long-lived connections at 10 msg/s, 1 s
# samples; no growth judgement, every other check applies.
#
# Kills exactly the processes it started (by pid) on exit.
set -euo pipefail

CMDLINE="scripts/soak.sh $*"
MINUTES=""
SMOKE=0
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        [0-9]*) MINUTES="$1" ;;
        *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ $SMOKE = 0 ] && [ -z "$MINUTES" ]; then
    echo "usage: scripts/soak.sh MINUTES [--no-build] [--out DIR] | --smoke" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
OUT=${OUT:-$ROOT/target/soak/$STAMP}
mkdir -p "$OUT/logs"
RUN=$(mktemp -d /tmp/wsedge-soak.XXXXXX)

ORIGIN_PORT=${ORIGIN_PORT:-19101}
PROXY_PORT=${PROXY_PORT:-19180}
ORIGIN=127.0.0.1:$ORIGIN_PORT

if [ $SMOKE = 1 ]; then
    LOAD_S=12; CHURN_RATE=100; STEADY=50; STEADY_RATE=10; INTERVAL=1; BASE_S=2; PROGRESS=5
    JUDGE=(--smoke)
else
    LOAD_S=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
    [ "$LOAD_S" -ge 60 ] || { echo "soak.sh: at least 1 minute (or --smoke)" >&2; exit 2; }
    CHURN_RATE=200; STEADY=200; STEADY_RATE=5; INTERVAL=5; BASE_S=5; PROGRESS=60
    JUDGE=()
fi

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- processes we start: pids recorded here, and only these are killed -------------------
PROC_LOG_DIR=$RUN
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
trap 'end_run $? "results and logs in $OUT"' EXIT
trap 'exit 130' INT TERM

# --- setup ------------------------------------------------------------------------------
if [ $BUILD = 1 ]; then
    log "building (release): wsedge, wsedge-bench"
    (cd "$ROOT" && cargo build --release -q -p wsedge -p wsedge-bench) || die "build failed"
fi
for b in wsedge wsedge-origin wsedge-soak; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b (build with: cargo build --release -p wsedge -p wsedge-bench)"
done

cat > "$RUN/wsedge.toml" <<EOF
# wsedge for scripts/soak.sh: 2 workers, access log off, one route per relay mode.
[dataplane]
listen = ["127.0.0.1:$PROXY_PORT"]
workers = 2

[access_log]
target = "off"

# Long-lived connections must outlive the soak.
[limits]
idle_timeout = "1h"
max_connection_time = "24h"

[[route]]
name = "soak-buffered"
path_prefix = "/buffered"
origins = ["$ORIGIN"]
relay = "buffered"

[[route]]
name = "soak-frames"
path_prefix = "/frames"
origins = ["$ORIGIN"]
relay = "frames"
EOF

start origin "$BIN/wsedge-origin" --listen "$ORIGIN" --threads 1
ORIGIN_PID=$STARTED
wait_port "$ORIGIN_PORT" "$ORIGIN_PID" origin
start wsedge env WSEDGE_LOG=warn "$BIN/wsedge" --config "$RUN/wsedge.toml"
WSEDGE_PID=$STARTED
wait_port "$PROXY_PORT" "$WSEDGE_PID" wsedge
# The port probe above was a connection too: let wsedge close it before the baseline.
sleep 1

CSV=$OUT/samples.csv
echo "t_s,phase,fds,rss_kib" > "$CSV"
T0=$(date +%s.%N)
LAST_FDS=0
# sample PHASE: appends one row; returns 1 if wsedge is gone.
sample() {
    local fds rss t entries
    kill -0 "$WSEDGE_PID" 2>/dev/null || return 1
    entries=("/proc/$WSEDGE_PID/fd/"*)
    [ -e "${entries[0]}" ] || [ -L "${entries[0]}" ] || return 1
    fds=${#entries[@]}
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$WSEDGE_PID/status" 2>/dev/null) || return 1
    [ -n "$rss" ] || return 1
    t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "$t,$1,$fds,$rss" >> "$CSV"
    LAST_FDS=$fds
}

DIED=0
log "wsedge pid $WSEDGE_PID, origin pid $ORIGIN_PID; results in $OUT"
for _ in $(seq "$BASE_S"); do
    sample baseline || die "wsedge died before the load"
    sleep 1
done
BASE_FDS=$LAST_FDS
log "baseline: $BASE_FDS fds; load for $LOAD_S s: churn $CHURN_RATE conn/s, $STEADY long-lived at $STEADY_RATE msg/s"

URL=ws://127.0.0.1:$PROXY_PORT
start load "$BIN/wsedge-soak" run --target "$URL/buffered" --target "$URL/frames" \
    --duration "$LOAD_S" --churn-rate "$CHURN_RATE" --churn-source-addrs 127.0.0.2-127.0.0.254 \
    --steady "$STEADY" --steady-rate "$STEADY_RATE" --progress "$PROGRESS" \
    --summary-out "$OUT/summary.json"
LOAD_PID=$STARTED
while kill -0 "$LOAD_PID" 2>/dev/null; do
    if ! sample load; then
        DIED=1
        log "wsedge (pid $WSEDGE_PID) died during the load"
        tail -20 "$RUN/wsedge.log" >&2 || true
        kill "$LOAD_PID" 2>/dev/null || true
        break
    fi
    sleep "$INTERVAL"
done
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
sed 's/^/    /' "$RUN/load.log" >&2
if [ $DIED = 0 ] && [ $LOAD_RC != 0 ]; then
    die "the load generator failed (exit $LOAD_RC)"
fi
[ $DIED = 0 ] || die "wsedge died during the load (log: $OUT/logs/wsedge.log)"
[ -s "$OUT/summary.json" ] || die "no load summary"

# After the load: fds must come back to the baseline (allow wsedge 20 s to close).
if [ $DIED = 0 ]; then
    for _ in $(seq 20); do
        sample after || { DIED=1; break; }
        [ "$LAST_FDS" != "$BASE_FDS" ] || break
        sleep 1
    done
    sample after || DIED=1
fi

ARGS=(report --csv "$CSV" --summary "$OUT/summary.json" --out "$OUT" "${JUDGE[@]}"
      --note "\`$CMDLINE\`, $STAMP, git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs, load average at end $(cut -d' ' -f1-3 /proc/loadavg)")
[ $DIED = 0 ] || ARGS+=(--wsedge-died)
if "$BIN/wsedge-soak" "${ARGS[@]}" > "$RUN/report.log" 2>&1; then
    sed 's/^/    /' "$RUN/report.log" >&2
    log "PASS: $OUT/soak.md"
else
    sed 's/^/    /' "$RUN/report.log" >&2
    die "see $OUT/soak.md"
fi
