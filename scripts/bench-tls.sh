#!/usr/bin/env bash
# wsedge TLS benchmark (issue 14): wsedge, HAProxy and nginx terminating TLS with the same
# certificate (ECDSA P-256, then RSA 2048, from scripts/dev-certs.sh) on one core each, in
# front of the same plain echo origin; full and resumed handshakes/s, CPU per handshake and
# 16 KiB messages over wss:// from wsedge-load, and TLS handshakes/s from an independent
# tool, `openssl s_time`, against the same targets in the same rounds.
#
#   scripts/bench-tls.sh [--full|--quick|--smoke] [--runs N] [--no-build] [--out DIR]
#                        [--only wsedge,haproxy,nginx] [--certs ecdsa,rsa]
#
#   --full   (default) 3 rounds, 8 s per wsedge-load run, s_time 8 s x 4 copies
#   --quick  3 rounds, 2 s per run, s_time 2 s x 4 copies
#   --smoke  wsedge only (both certificates), 1 round, 1 s per run, s_time 1 s x 1 copy, no
#            packages, no sysctls: checks that the script works end to end (output under
#            target/bench-smoke/)
#   --runs N rounds: every target and scenario runs N times, rounds interleaved (the outer
#            loop), and the report gives medians with their spread
#   --only   targets to run; --certs   certificates to run them with
#
# Scenarios, per target and certificate (labels wsedge-ecdsa-w1, haproxy-rsa-w1, ...):
#   tls13-hs-full       wsedge-load handshakes, 50 loops, TLS 1.3, no session kept: every
#                       handshake full (connect, TLS, upgrade, one 64 B echo, close)
#   tls13-hs-resume     the same with --resume: each loop resumes its previous session
#   tls12-hs-resume     the same over TLS 1.2 (the resumption s_time can measure)
#   s_time-new          openssl s_time -new (TLS 1.3): full TLS handshakes, no WebSocket
#   s_time-reuse-tls12  openssl s_time -reuse -tls1_2 (s_time cannot resume TLS 1.3)
#   wss-flood-16k       wsedge-load throughput over wss://, 100 connections, 16 KiB, 16 in flight
#   wss-uflood-16k      wsedge-load flood over wss://, 100 connections, 16 KiB, unbounded
# Each record names its TLS mode (`tls` in the JSON) and the tool that produced it.
#
# Writes bench/results/<UTC date-time>-tls/: results.md, results.json, runs.jsonl, host.txt
# and logs/. Starts processes itself, records their pids and kills exactly those on exit.
# Ports: ORIGIN_PORT (19001) and PROXY_PORT (19443); certificates: CERT_DIR
# (target/dev-certs, made or refreshed by scripts/dev-certs.sh); OPENSSL (openssl on PATH).
set -euo pipefail

MODE=full
BUILD=1
OUT=""
RUNS=""
ONLY=wsedge,haproxy,nginx
CERTS=ecdsa,rsa
while [ $# -gt 0 ]; do
    case "$1" in
        --full) MODE=full ;;
        --quick) MODE=quick ;;
        --smoke) MODE=smoke ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        --runs) RUNS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --certs) CERTS="$2"; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "bench-tls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
if [ "$MODE" = smoke ]; then
    OUT=${OUT:-$CARGO_TARGET_DIR/bench-smoke/$STAMP-tls}
else
    OUT=${OUT:-$ROOT/bench/results/$STAMP-tls}
fi
mkdir -p "$OUT/logs"
RUN=$(mktemp -d /tmp/wsedge-bench-tls.XXXXXX)
JSONL=$OUT/runs.jsonl
: > "$JSONL"

ORIGIN_PORT=${ORIGIN_PORT:-19001}
PROXY_PORT=${PROXY_PORT:-19443}
ORIGIN=127.0.0.1:$ORIGIN_PORT
CPUS=$(nproc)
SRC=127.0.0.1-127.0.0.50
CERT_DIR=${CERT_DIR:-$CARGO_TARGET_DIR/dev-certs}
OPENSSL=${OPENSSL:-openssl}

# DUR: seconds per wsedge-load run (s_time: whole seconds); STIME_COPIES: s_time processes
# side by side (each makes one connection at a time).
case $MODE in
    full)  DUR=8; WARM=1; ROUNDS=3; STIME_COPIES=4 ;;
    quick) DUR=2; WARM=0.5; ROUNDS=3; STIME_COPIES=4 ;;
    smoke) DUR=1; WARM=0.3; ROUNDS=1; STIME_COPIES=1; ONLY=wsedge ;;
esac
ROUNDS=${RUNS:-$ROUNDS}
case $ROUNDS in ''|*[!0-9]*|0) echo "bench-tls.sh: --runs needs a positive number" >&2; exit 2 ;; esac

BENCH_TAG=bench-tls
# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
PROC_LOG_DIR=$RUN
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
cleanup() {
    local rc=$?
    stop_all
    restore_port_range
    cp "$RUN"/*.log "$OUT/logs/" 2>/dev/null || true
    rm -rf "$RUN"
    [ $rc -eq 0 ] || log "exit $rc; logs in $OUT/logs"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- setup ------------------------------------------------------------------------------
if [ $BUILD = 1 ]; then
    log "building (release): wsedge, wsedge-bench"
    (cd "$ROOT" && cargo build --release -q -p wsedge -p wsedge-bench) || die "build failed"
fi
for b in wsedge wsedge-origin wsedge-load wsedge-report; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b (build with: cargo build --release -p wsedge -p wsedge-bench)"
done
command -v "$OPENSSL" >/dev/null || die "no $OPENSSL (apt-get install openssl): it makes the certificates and runs s_time"
if [ $MODE != smoke ]; then
    if want nginx || want haproxy; then install_proxies; fi
    widen_port_range
fi

# The certificates: every target serves the same files (made once, kept while valid).
"$ROOT/scripts/dev-certs.sh" "$CERT_DIR" 2>&1 | sed 's/^/    /' >&2 || die "scripts/dev-certs.sh failed"
CA=$CERT_DIR/ca.pem
# cert_files KIND: CERT and KEY of the ECDSA (localhost) or RSA (localhost-rsa) leaf.
cert_files() {
    case $1 in
        ecdsa) CERT=$CERT_DIR/localhost.pem; KEY=$CERT_DIR/localhost.key ;;
        rsa) CERT=$CERT_DIR/localhost-rsa.pem; KEY=$CERT_DIR/localhost-rsa.key ;;
        *) die "unknown certificate kind $1 (ecdsa, rsa)" ;;
    esac
}

write_host_txt "$OUT/host.txt" "$STAMP"
{
    echo "openssl: $("$OPENSSL" version)"
    for kind in ${CERTS//,/ }; do
        cert_files "$kind"
        echo "certificate_$kind: $CERT: $("$OPENSSL" x509 -in "$CERT" -noout -text \
            | grep -E 'Public Key Algorithm|Public-Key:' | sed 's/^ *//' | paste -sd' ' -);" \
            "$("$OPENSSL" x509 -in "$CERT" -noout -fingerprint -sha256)"
    done
    echo "client: wsedge-load (rustls, aws-lc-rs), key exchange X25519 only; s_time copies: $STIME_COPIES"
    echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$OUT/host.txt"
warn_if_busy

need_free_port "$ORIGIN_PORT"
need_free_port "$PROXY_PORT"
start origin "$BIN/wsedge-origin" --listen "$ORIGIN" --threads "$CPUS"
ORIGIN_PID=$STARTED
wait_port "$ORIGIN_PORT" "$ORIGIN_PID" origin

# --- scenarios --------------------------------------------------------------------------
# load LABEL SCENARIO MODE ARGS...: one wsedge-load run against $URL, its JSON appended.
load() {
    local label=$1 scenario=$2 mode=$3; shift 3
    log "$label / $scenario"
    if ! "$BIN/wsedge-load" "$mode" --target "$URL" --tls-ca "$CA" --label "$label" \
        --scenario "$scenario" --origin-pid "$ORIGIN_PID" "${TARGET_PIDS[@]/#/--pid=}" \
        --openssl "$OPENSSL" --json-out "$JSONL" "$@" 2>&1 | sed 's/^/    /' >&2; then
        die "$label / $scenario: wsedge-load failed"
    fi
}

scenarios() {
    local label=$1 hs=(--concurrency 50 --size 64 --duration "$DUR" --warmup "$WARM" --source-addrs "$SRC")
    load "$label" tls13-hs-full handshakes "${hs[@]}" --tls-version 1.3
    load "$label" tls13-hs-resume handshakes "${hs[@]}" --tls-version 1.3 --resume
    # TLS 1.2 with an ECDSA P-256 certificate: the client's supported groups must name P-256
    # too (RFC 8422 5.1.1: they also say which curves it can verify signatures on; OpenSSL
    # refuses the handshake otherwise, rustls does not check). X25519 stays first, so the
    # key exchange is still X25519 everywhere (the report's last table shows it).
    load "$label" tls12-hs-resume handshakes "${hs[@]}" --tls-version 1.2 --resume \
        --tls-groups x25519,secp256r1
    load "$label" s_time-new s-time --concurrency "$STIME_COPIES" --duration "$DUR" \
        --tls-version 1.3
    load "$label" s_time-reuse-tls12 s-time --concurrency "$STIME_COPIES" --duration "$DUR" \
        --resume --tls-version 1.2
    load "$label" wss-flood-16k throughput --connections 100 --size 16384 --depth 16 \
        --duration "$DUR" --warmup "$WARM"
    load "$label" wss-uflood-16k flood --connections 100 --size 16384 \
        --duration "$DUR" --warmup "$WARM"
}

# serve LABEL PID: wait for the target's port, check one wss:// echo through it (full
# handshake, then a resumed one), run the scenarios, stop it.
serve() {
    local label=$1 pid=$2
    wait_port "$PROXY_PORT" "$pid" "$label"
    URL="wss://127.0.0.1:$PROXY_PORT/ws"
    local check
    check=$("$BIN/wsedge-load" handshakes --target "$URL" --tls-ca "$CA" --concurrency 1 \
        --duration 0.3 --warmup 0 --resume --json 2>&1) || true
    if ! grep -q '"errors":0' <<< "$check" || grep -q '"sessions_per_s":0[,.]' <<< "$check"; then
        tail -20 "$RUN/$label.log" >&2 || true
        echo "$check" >&2
        die "$label does not relay a wss:// echo"
    fi
    grep -q '"resumed":0,' <<< "$check" && log "warning: $label resumed no TLS session in its check"
    scenarios "$label"
    stop "$pid"
}

run_wsedge() {
    local kind=$1 label="wsedge-$1-w1"
    cert_files "$kind"
    sed -e "s/@WORKERS@/1/" -e "s/@PORT@/$PROXY_PORT/" -e "s/@ORIGIN@/$ORIGIN/" \
        -e "s#@CERT@#$CERT#" -e "s#@KEY@#$KEY#" "$ROOT/bench/wsedge-tls.toml.tmpl" > "$RUN/wsedge.toml"
    need_free_port "$PROXY_PORT"
    start "$label" env WSEDGE_LOG=warn "$BIN/wsedge" --config "$RUN/wsedge.toml"
    TARGET_PIDS=("$STARTED")
    serve "$label" "$STARTED"
}

run_haproxy() {
    local kind=$1 label="haproxy-$1-w1"
    cert_files "$kind"
    # HAProxy's `crt` takes the certificate and its key in one file.
    cat "$CERT" "$KEY" > "$RUN/haproxy-$kind.pem"
    sed -e "s/@THREADS@/1/" -e "s/@PORT@/$PROXY_PORT/" -e "s/@ORIGIN@/$ORIGIN/" \
        -e "s#@PEM@#$RUN/haproxy-$kind.pem#" "$ROOT/bench/haproxy-tls.cfg.tmpl" > "$RUN/haproxy.cfg"
    need_free_port "$PROXY_PORT"
    start "$label" haproxy -db -f "$RUN/haproxy.cfg"
    TARGET_PIDS=("$STARTED")
    serve "$label" "$STARTED"
}

run_nginx() {
    local kind=$1 label="nginx-$1-w1" pid
    cert_files "$kind"
    mkdir -p "$RUN/nginx-tmp"
    sed -e "s/@WORKERS@/1/" -e "s/@PORT@/$PROXY_PORT/" -e "s/@ORIGIN@/$ORIGIN/" \
        -e "s#@DIR@#$RUN#g" -e "s#@CERT@#$CERT#" -e "s#@KEY@#$KEY#" \
        "$ROOT/bench/nginx-tls.conf.tmpl" > "$RUN/nginx.conf"
    need_free_port "$PROXY_PORT"
    start "$label" nginx -c "$RUN/nginx.conf" -p "$RUN"
    pid=$STARTED
    wait_port "$PROXY_PORT" "$pid" "$label"
    # The worker does the work: measure it (the master only supervises).
    mapfile -t TARGET_PIDS < <(pgrep -P "$pid")
    [ ${#TARGET_PIDS[@]} -gt 0 ] || die "no nginx workers under $pid"
    serve "$label" "$pid"
}

T0=$(date +%s)
log "mode $MODE, $ROUNDS round(s), targets $ONLY, certificates $CERTS: results in $OUT"
# Rounds are the outer loop, so a burst of other work on the host lands in one run of each
# target rather than in every run of one.
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for kind in ${CERTS//,/ }; do
        if want wsedge; then run_wsedge "$kind"; fi
        if want haproxy; then run_haproxy "$kind"; fi
        if want nginx; then run_nginx "$kind"; fi
    done
done
log "runs done in $(( $(date +%s) - T0 )) s; writing the report"
echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/host.txt"
echo "runs_s: $(( $(date +%s) - T0 ))" >> "$OUT/host.txt"
"$BIN/wsedge-report" --tls --runs "$JSONL" --host "$OUT/host.txt" --out "$OUT" \
    || die "wsedge-report failed"
log "done: $OUT/results.md"
