#!/usr/bin/env bash
# wsedge scaling check (issue 18): what a second worker costs per message and per session,
# on this host, loopback only. docs/benchmarks.md, "Scaling to many cores", has the reading.
#
#   scripts/bench-scaling.sh [ROUNDS] [--no-build]     (default 3 rounds, ~5 minutes)
#
# Three cases per round, interleaved, `relay = "auto"`, 100 connections:
#   w1-pinned    1 worker (pinned to CPU 0), generator and origin pinned to CPU 1 (taskset)
#   w2-50addrs   2 workers, generator spread over 127.0.0.1-127.0.0.50 (the reuseport
#                steering hashes the client address: one address, one worker)
#   w2-1addr     2 workers, one source address: every connection on one worker
#   w2-1addr-conn  the same with `steering = "connection"`: the kernel spreads them
# each running the unbounded 64 B and 16 KiB floods (6 s) and the handshake loop (50 loops,
# 4 s). Prints one line per run: delivered msg/s and wsedge's CPU per message (user + system
# over delivered messages, whole process), the connections per worker seen mid-flood, and
# sessions/s with wsedge's CPU per 1,000 sessions.
#
# Kills exactly the processes it started.
set -euo pipefail

ROUNDS=3
BUILD=1
for arg in "$@"; do
    case $arg in
        --no-build) BUILD=0 ;;
        [0-9]*) ROUNDS=$arg ;;
        *) echo "usage: scripts/bench-scaling.sh [ROUNDS] [--no-build]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
[ "$(nproc)" -ge 2 ] || { echo "bench-scaling.sh: needs at least 2 CPUs" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
    cargo build --release --bin wsedge --bin wsedgectl -p wsedge-bench >&2
fi
B=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# run_case NAME WORKERS PIN_OTHERS SOURCE_ADDRS [DATAPLANE_LINE]
run_case() {
    local name=$1 workers=$2 pin=$3 src=$4 extra=${5:-} dir
    dir=$(mktemp -d -p "$WORK")
    sed -e "s/@WORKERS@/$workers/" -e "s/@PORT@/19500/" -e "s/@ORIGIN@/127.0.0.1:19501/" \
        -e "s/@RELAY@/auto/" bench/wsedge.toml.tmpl >"$dir/w.toml"
    [ -n "$extra" ] && sed -i "s|^\[dataplane\]\$|[dataplane]\n$extra|" "$dir/w.toml"
    printf '\n[control]\nsocket = "%s/dp.sock"\n' "$dir" >>"$dir/w.toml"
    local pin_cmd=() src_args=()
    [ "$pin" = 1 ] && pin_cmd=(taskset -c 1)
    [ -n "$src" ] && src_args=(--source-addrs "$src")
    "${pin_cmd[@]}" "$B/wsedge-origin" --listen 127.0.0.1:19501 --threads 2 >/dev/null 2>&1 &
    local origin=$!
    "$B/wsedge" --config "$dir/w.toml" >"$dir/wsedge.log" 2>&1 &
    local wsedge=$!
    PIDS+=("$origin" "$wsedge")
    sleep 1
    kill -0 "$wsedge" 2>/dev/null || { cat "$dir/wsedge.log" >&2; exit 1; }
    local size split
    for size in 64 16384; do
        "${pin_cmd[@]}" "$B/wsedge-load" flood --target ws://127.0.0.1:19500/ --connections 100 \
            --size "$size" --duration 6 --pid "$wsedge" --origin-pid "$origin" \
            "${src_args[@]}" >"$dir/flood-$size.log" 2>&1 &
        local load=$!
        sleep 3
        split=$("$B/wsedgectl" --dataplane "$dir/dp.sock" --json connections | python3 -c '
import collections, json, sys
c = collections.Counter(x["worker"] for x in json.load(sys.stdin)["connections"])
print(" / ".join(str(c[w]) for w in range(int(sys.argv[1]))))' "$workers")
        wait "$load" || { cat "$dir/flood-$size.log" >&2; exit 1; }
        echo "$name ${size} B flood: $(grep -oP 'delivered \K[0-9]+ msg/s' "$dir/flood-$size.log" | head -1)," \
            "wsedge $(grep -oP 'CPU µs per delivered message: generator [0-9.]+, target \K[0-9.]+' "$dir/flood-$size.log") µs CPU per msg," \
            "connections per worker $split"
    done
    "${pin_cmd[@]}" "$B/wsedge-load" handshakes --target ws://127.0.0.1:19500/ --concurrency 50 \
        --size 64 --duration 4 --warmup 1 --pid "$wsedge" "${src_args[@]}" >"$dir/handshakes.log" 2>&1 \
        || { cat "$dir/handshakes.log" >&2; exit 1; }
    echo "$name handshakes: $(grep -oP '[0-9]+ sessions/s' "$dir/handshakes.log" | head -1)," \
        "$(grep -oP 'target CPU \K[0-9.]+ s per 1,000 sessions' "$dir/handshakes.log" | head -1)"
    kill "$wsedge" "$origin" 2>/dev/null || true
    wait "$wsedge" "$origin" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
    run_case "round $round w1-pinned" 1 1 ""
    run_case "round $round w2-50addrs" 2 0 "127.0.0.1-127.0.0.50"
    run_case "round $round w2-1addr" 2 0 ""
    run_case "round $round w2-1addr-conn" 2 0 "" 'steering = "connection"'
done
