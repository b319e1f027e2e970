#!/usr/bin/env bash
# wsedge many-hosts benchmark (issue 16): broadcast fan-out across three wsedge instances
# sharing a Redis, against the same load on one instance. Starts its own redis-server (on
# REDIS_PORT, not 6379: a Redis already running there is left alone) and three release wsedge
# instances with configurations generated from docs/examples/many-hosts/host-{1,2,3}.toml
# (ports, socket paths, the Redis address and the worker count changed; max_send_queue
# raised as in scripts/bench.sh's fan-out), plus a fourth without [broker], then runs
# interleaved rounds of `wsedge-load fanout` (64 B messages, one publisher at RATE msg/s):
#
#   cross-host            3 x S subscribers round robin over the three instances
#                         (--subscribe-target), publisher on the first
#   single-host           the same 3 x S subscribers and publisher all on the first instance,
#                         same [broker] table: only the spread differs
#   single-host-nobroker  the same on the fourth instance (no [broker]): what the broker hop
#                         costs on one host
#
# Each run records deliveries/s, publish-to-last-subscriber p50/p99, the instances' CPU, and
# the broker's CPU (redis-server's pid) and bytes in/out (Redis INFO stats) per published
# message and per delivery.
#
#   scripts/bench-many-hosts.sh [--full|--smoke] [--runs N] [--no-build] [--out DIR]
#                               [--shapes cross-host,single-host,single-host-nobroker]
#
#   --full   (default) S=3000, RATE=1000, DUR=10 s measured after WARM=2 s, 3 rounds
#   --smoke  S=50, DUR=3 s, WARM=0.5 s, 1 round (output under target/bench-smoke/): checks
#            that the script works end to end
#   --runs N rounds (the outer loop: every shape runs once per round); the report gives
#            medians with their spread
#
# Environment: S (subscribers per instance), RATE (published msg/s), DUR, WARM, WORKERS
# (wsedge workers per instance, default 1: each instance on one core), THREADS (generator
# threads, default 1), REDIS_PORT (19379), BASE_PORT (19180: WebSockets on BASE+1..BASE+4,
# publish API on BASE+11..13, metrics on BASE+21..24), REDIS_SERVER (redis-server on PATH).
#
# Writes bench/results/<UTC date-time>-hosts/: results.md, results.json, runs.jsonl,
# host.txt and logs/. Starts processes itself, records their pids and kills exactly those.
set -euo pipefail

MODE=full
BUILD=1
OUT=""
RUNS=""
SHAPES=cross-host,single-host,single-host-nobroker
while [ $# -gt 0 ]; do
    case "$1" in
        --full) MODE=full ;;
        --smoke) MODE=smoke ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        --runs) RUNS="$2"; shift ;;
        --shapes) SHAPES="$2"; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "bench-many-hosts.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
if [ "$MODE" = smoke ]; then
    OUT=${OUT:-$CARGO_TARGET_DIR/bench-smoke/$STAMP-hosts}
else
    OUT=${OUT:-$ROOT/bench/results/$STAMP-hosts}
fi

case $MODE in
    full)  S=${S:-3000}; DUR=${DUR:-10}; WARM=${WARM:-2}; ROUNDS=3 ;;
    smoke) S=${S:-50}; DUR=${DUR:-3}; WARM=${WARM:-0.5}; ROUNDS=1 ;;
esac
ROUNDS=${RUNS:-$ROUNDS}
RATE=${RATE:-1000}
WORKERS=${WORKERS:-1}
THREADS=${THREADS:-1}
REDIS_PORT=${REDIS_PORT:-19379}
BASE_PORT=${BASE_PORT:-19180}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
SRC=127.0.0.1-127.0.0.200
LABEL=wsedge-w$WORKERS
for shape in ${SHAPES//,/ }; do
    case $shape in
        cross-host|single-host|single-host-nobroker) ;;
        *) echo "bench-many-hosts.sh: unknown shape $shape (cross-host, single-host, single-host-nobroker)" >&2; exit 2 ;;
    esac
done
for v in S RATE WORKERS THREADS ROUNDS; do
    case ${!v} in ''|*[!0-9]*|0) echo "bench-many-hosts.sh: $v needs a positive number" >&2; exit 2 ;; esac
done
SUBS=$((3 * S))

mkdir -p "$OUT/logs"
RUN=$(mktemp -d /tmp/wsedge-bench-hosts.XXXXXX)
JSONL=$OUT/runs.jsonl
: > "$JSONL"

BENCH_TAG=bench-many-hosts
# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
PROC_LOG_DIR=$RUN
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
trap 'end_run $? "logs in $OUT/logs"' EXIT
trap 'exit 130' INT TERM

want() { case ",$SHAPES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- setup ------------------------------------------------------------------------------
if [ $BUILD = 1 ]; then
    log "building (release): wsedge, wsedge-bench"
    (cd "$ROOT" && cargo build --release -q -p wsedge -p wsedge-bench) || die "build failed"
fi
for b in wsedge wsedge-load wsedge-report; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b (build with: cargo build --release -p wsedge -p wsedge-bench)"
done
command -v "$REDIS_SERVER" >/dev/null \
    || die "no $REDIS_SERVER (apt-get install redis-server): the broker of the cross-host runs"

# File descriptors: the generator holds every subscriber (3 x S + the publisher) and the
# single-host instance as many client sockets; raise the soft limit to the hard one if short.
NEED_FDS=$((SUBS + 1000))
[ "$(ulimit -n)" -ge "$NEED_FDS" ] || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge "$NEED_FDS" ] \
    || die "open files limit $(ulimit -n) (hard $(ulimit -Hn)) is below the $NEED_FDS that 3 x $S subscribers need"

WS1=$((BASE_PORT + 1))
WS_NOBROKER=$((BASE_PORT + 4))
url() { echo "ws://127.0.0.1:$((BASE_PORT + $1))/ch/$2"; }

# config N OUT [nobroker]: host-N's example with this run's ports, sockets, Redis and
# workers (the fourth instance: host-1's without the [broker] tables, on BASE+4).
config() {
    local n=$1 out=$2 src=$ROOT/docs/examples/many-hosts/host-$1.toml
    [ "${3:-}" = nobroker ] && src=$ROOT/docs/examples/many-hosts/host-1.toml
    sed -e '/^#/d' -e "s/127\.0\.0\.1:818[1-3]/127.0.0.1:$((BASE_PORT + n))/" \
        -e "s/127\.0\.0\.1:819[1-3]/127.0.0.1:$((BASE_PORT + 10 + n))/" \
        -e "s/127\.0\.0\.1:918[1-3]/127.0.0.1:$((BASE_PORT + 20 + n))/" \
        -e "s#/tmp/wsedge-host-[1-3]\.sock#$RUN/wsedge-$n.sock#" \
        -e "s#/tmp/wsedgectl-host-[1-3]\.sock#$RUN/wsedgectl-$n.sock#" \
        -e "s#127\.0\.0\.1:6379#127.0.0.1:$REDIS_PORT#" \
        -e "s/^workers = .*/workers = $WORKERS/" \
        -e "s/^function = \"broadcast\"$/&\n# No subscriber is cut as a slow consumer (as in scripts\/bench.sh's fan-out).\nmax_send_queue = 67108864/" \
        "$src" > "$out"
    if [ "${3:-}" = nobroker ]; then
        # Drop [broker] and [[broker.recovery]] up to the next other table.
        awk '/^\[/ { skip = ($0 ~ /^\[+broker[].]/) } !skip' "$out" > "$out.tmp" && mv "$out.tmp" "$out"
        grep -q '^\[broker\]' "$out" && die "could not remove [broker] from $out"
    fi
    # The examples changed shape if any of their addresses survived: fail rather than
    # benchmark against the wrong ports (or a Redis on 6379).
    if grep -Eq ':(818|819|918)[1-3]\b|:6379\b|/tmp/wsedge(ctl)?-host' "$out"; then
        die "$out still has an address of the examples: update config() in $0"
    fi
    grep -q "^workers = $WORKERS$" "$out" && grep -q '^max_send_queue = ' "$out" \
        || die "$out: workers or max_send_queue not set: update config() in $0"
}

write_host_txt "$OUT/host.txt" "$STAMP"
{
    echo "redis: $("$REDIS_SERVER" --version)"
    echo "shapes: $SHAPES"
    echo "subscribers: 3 x $S = $SUBS; publish rate: $RATE msg/s, 64 B; duration: $DUR s after $WARM s warm-up"
    echo "wsedge: $WORKERS worker(s) per instance; generator: wsedge-load fanout, $THREADS thread(s), one process"
    echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$OUT/host.txt"
warn_if_busy

need_free_port "$REDIS_PORT"
start redis "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$STARTED
wait_port "$REDIS_PORT" "$REDIS_PID" redis

HOST_PIDS=()
for n in 1 2 3; do
    config "$n" "$RUN/host-$n.toml"
    need_free_port "$((BASE_PORT + n))"
    start "host-$n" env WSEDGE_LOG=warn "$BIN/wsedge" --config "$RUN/host-$n.toml"
    HOST_PIDS+=("$STARTED")
done
for n in 1 2 3; do wait_port "$((BASE_PORT + n))" "${HOST_PIDS[$((n - 1))]}" "host-$n"; done
if want single-host-nobroker; then
    config 4 "$RUN/host-nobroker.toml" nobroker
    need_free_port "$WS_NOBROKER"
    start host-nobroker env WSEDGE_LOG=warn "$BIN/wsedge" --config "$RUN/host-nobroker.toml"
    NOBROKER_PID=$STARTED
    wait_port "$WS_NOBROKER" "$NOBROKER_PID" host-nobroker
fi

# fanout SCENARIO CHANNEL ARGS...: one wsedge-load fanout run, its JSON appended.
fanout() {
    local scenario=$1 channel=$2; shift 2
    "$BIN/wsedge-load" fanout --size 64 --rate "$RATE" --source-addrs "$SRC" \
        --threads "$THREADS" --label "$LABEL" --scenario "$scenario" "$@" 2>&1 \
        | sed 's/^/    /' >&2 || die "$scenario ($channel): wsedge-load failed"
}

# Every instance hears the others through Redis before anything is measured: one subscriber
# on each, the publisher on the third, nothing missing (a host that failed to reach Redis
# would serve its channels locally and miss the others' messages).
CHECK=$RUN/check.jsonl
fanout check check --target "$(url 3 check)" --connections 3 --duration 0.5 --warmup 0.2 \
    --subscribe-target "$(url 1 check),$(url 2 check),$(url 3 check)" --json-out "$CHECK"
grep -q '"missing":0,' "$CHECK" && grep -q '"subscribers_short":0,' "$CHECK" \
    || die "the three instances do not share broadcast messages through Redis on :$REDIS_PORT (logs in $OUT/logs)"
log "check: a message published on host 3 reached subscribers on hosts 1, 2 and 3"

BROKER=(--broker-pid "$REDIS_PID" --broker-redis "redis://127.0.0.1:$REDIS_PORT")
ALL_HOSTS=("${HOST_PIDS[@]/#/--pid=}")
run_shape() {
    local shape=$1 round=$2 ch="bench-r$2-$1"
    log "round $round: $shape, $SUBS subscribers, $RATE msg/s"
    case $shape in
        cross-host)
            fanout "$shape" "$ch" --target "$(url 1 "$ch")" --connections "$SUBS" \
                --subscribe-target "$(url 1 "$ch"),$(url 2 "$ch"),$(url 3 "$ch")" \
                --duration "$DUR" --warmup "$WARM" "${ALL_HOSTS[@]}" "${BROKER[@]}" \
                --json-out "$JSONL" ;;
        single-host)
            fanout "$shape" "$ch" --target "$(url 1 "$ch")" --connections "$SUBS" \
                --duration "$DUR" --warmup "$WARM" "${ALL_HOSTS[@]}" "${BROKER[@]}" \
                --json-out "$JSONL" ;;
        single-host-nobroker)
            fanout "$shape" "$ch" --target "$(url 4 "$ch")" --connections "$SUBS" \
                --duration "$DUR" --warmup "$WARM" --pid "$NOBROKER_PID" --json-out "$JSONL" ;;
    esac
    # The instances close the run's subscribers before the next run opens its own.
    sleep 1
}

T0=$(date +%s)
log "mode $MODE, $ROUNDS round(s), shapes $SHAPES, 3 x $S subscribers at $RATE msg/s, $WORKERS worker(s) per instance: results in $OUT"
# Rounds are the outer loop, so a burst of other work on the host lands in one run of each
# shape rather than in every run of one.
for round in $(seq "$ROUNDS"); do
    for shape in ${SHAPES//,/ }; do run_shape "$shape" "$round"; done
done
log "runs done in $(( $(date +%s) - T0 )) s; writing the report"
echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/host.txt"
echo "runs_s: $(( $(date +%s) - T0 ))" >> "$OUT/host.txt"
"$BIN/wsedge-report" --hosts --runs "$JSONL" --host "$OUT/host.txt" --out "$OUT" \
    || die "wsedge-report failed"
log "done: $OUT/results.md"
