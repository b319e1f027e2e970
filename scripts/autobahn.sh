#!/usr/bin/env bash
# WebSocket conformance: Autobahn|Testsuite's fuzzingclient against the bundled echo origin
# directly (the baseline) and through wsedge in each relay mode, then a per-case comparison;
# over `wss://` through wsedge terminating TLS (`wss`); and against wsedge's own `echo`
# function and a JavaScript echo function (`js`: the shipped docs/examples/functions/echo.js
# on a `function = "js"` route).
#
#   scripts/autobahn.sh [--smoke] [--modes buffered,splice,frames,auto,wss,echo,js] [--debug] [--keep]
#
#   --smoke   a representative subset of cases (scripts/autobahn/cases.json), ~5 s per
#             server; what CI runs (scripts/test.sh)
#   --modes   relay modes to put wsedge in, `wss` for `wss://` (a [[tls_listener]], relay
#             buffered, a throwaway CA and leaf from scripts/dev-certs.sh made under the work
#             directory; the fuzzingclient verifies the leaf for 127.0.0.1 against that CA
#             only), `echo` for the echo function and `js` for the JavaScript echo (default:
#             all seven). A mode this build's `wsedge --check` rejects is skipped with a loud
#             message, never passed.
#   --debug   use (and build) the debug binaries instead of release ones
#   --keep    keep the work directory (configs, specs, process logs) even on success
#
# Passes (exit 0) only if no case is FAILED in any run and every case's behavior through
# wsedge equals the direct run's (the echo functions are endpoints of their own: they must
# pass every case, and may be stricter than the bundled origin). Reports (HTML + index.json) land in target/autobahn/<mode>/,
# the summary in target/autobahn/summary.md. The first run installs the suite (Python 2.7.18
# from pyenv, a virtualenv from PyPI) into target/autobahn-venv/; later runs reuse it.
# Every process is started here, recorded by pid, and only those pids are stopped on exit.
# All traffic stays on 127.0.0.1. Details and the latest results: docs/conformance.md.
set -euo pipefail

SET=full
MODES=buffered,splice,frames,auto,wss,echo,js
KEEP=0
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SET=smoke ;;
        --modes) MODES=${2:?--modes needs a list}; shift ;;
        --modes=*) MODES=${1#--modes=} ;;
        --keep) KEEP=1 ;;
        --debug) PROFILE=debug ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "autobahn.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/autobahn
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/$PROFILE
# Reports and the venv always go under the repository's own target/ (git-ignored), whatever
# CARGO_TARGET_DIR says, so they are found in one place.
OUT=$ROOT/target/autobahn
VENV=$ROOT/target/autobahn-venv
SUITE_VERSION=25.10.1

log() { printf '[autobahn %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
banner() { printf '\n!!!!!!!!!!\n!!! %s\n!!!!!!!!!!\n\n' "$*" >&2; }

# Validate the modes before doing anything slow. "direct" is always run: it is the baseline.
IFS=, read -r -a MODE_LIST <<< "$MODES"
for m in "${MODE_LIST[@]}"; do
    case "$m" in
        buffered|splice|frames|auto|wss|echo|js) ;;
        *) echo "autobahn.sh: unknown mode '$m' (buffered, splice, frames, auto, wss, echo, js)" >&2; exit 2 ;;
    esac
done
command -v python3 >/dev/null || die "python3 is needed for the result comparison"

mkdir -p "$OUT"
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK"

# --- processes we start: pids recorded here, and only these are stopped ------------------
PROC_LOG_DIR=$WORK
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
cleanup() {
    local rc=$?
    stop_all
    if [ $rc -ne 0 ]; then
        log "exit $rc; configs, specs and logs kept in $WORK"
    elif [ $KEEP = 1 ]; then
        log "configs, specs and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# listening_addr NAME PID PREFIX: waits for "PREFIX ADDR" (or "PREFIX ADDR (tls)") in NAME's
# log and prints ADDR. Both servers bind port 0 and print the port the kernel chose: no
# free-port guessing.
listening_addr() {
    local name=$1 pid=$2 prefix=$3 i addr
    for i in $(seq 200); do
        addr=$(sed -n "s/^$prefix \\(127\\.0\\.0\\.1:[0-9]*\\)\\( (tls)\\)\\{0,1\\}\$/\\1/p" "$WORK/$name.log" | head -1)
        if [ -n "$addr" ]; then
            echo "$addr"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$WORK/$name.log" >&2 || true
            die "$name exited before it listened"
        fi
        sleep 0.05
    done
    tail -20 "$WORK/$name.log" >&2 || true
    die "$name did not report a listening address within 10 s"
}

# --- the suite: Python 2.7.18 from pyenv, a virtualenv with autobahntestsuite ------------
# The suite is Python 2 only. Everything comes from PyPI; virtualenv is told not to fetch
# newer seed packages (it would otherwise try, in the background).
setup_suite() {
    local pyroot p2
    if command -v pyenv >/dev/null; then pyroot=$(pyenv root); else pyroot=${PYENV_ROOT:-$HOME/.pyenv}; fi
    p2=$pyroot/versions/2.7.18/bin/python
    if [ ! -x "$p2" ]; then
        banner "Python 2.7.18 not found at $p2"
        die "Autobahn|Testsuite needs the pyenv Python 2.7.18 of this machine image (pyenv install 2.7.18)"
    fi
    # The stamp is written last: a venv without it is a half-finished install, redone.
    if [ -x "$VENV/wstest-venv/bin/wstest" ] && [ "$(cat "$VENV/installed" 2>/dev/null)" = "$SUITE_VERSION" ]; then
        return 0
    fi
    log "installing autobahntestsuite==$SUITE_VERSION into $VENV (first run; takes a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$VENV"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1
    {
        "$p2" -m pip install -q --target "$VENV/venv-tool" 'virtualenv<20.22' &&
        PYTHONPATH="$VENV/venv-tool" "$p2" -m virtualenv -q --no-periodic-update \
            --app-data "$VENV/app-data" -p "$p2" "$VENV/wstest-venv" &&
        "$VENV/wstest-venv/bin/pip" install -q "autobahntestsuite==$SUITE_VERSION"
    } > "$WORK/install.log" 2>&1 || {
        grep -v DEPRECATION "$WORK/install.log" | tail -30 >&2
        die "installing Autobahn|Testsuite failed (log above)"
    }
    [ -x "$VENV/wstest-venv/bin/wstest" ] || die "the install left no wstest in $VENV/wstest-venv/bin"
    echo "$SUITE_VERSION" > "$VENV/installed"
}

# --- run the fuzzingclient against one server ---------------------------------------------
# run_suite MODE URL [CA]: fresh report dir target/autobahn/MODE/ (stale cases from an older
# run would otherwise be read as this run's), bounded by a timeout so a hung relay fails the
# run. With CA (a wss:// URL), the fuzzingclient verifies the server's certificate for the
# URL's address against that CA file and nothing else: the spec names the host
# ("hostname", so Twisted's optionsForClientTLS checks the certificate and the address) and
# SSL_CERT_FILE makes the CA OpenSSL's default trust. Without "hostname" the suite would
# connect with Twisted's ClientContextFactory, which verifies nothing.
SUITE_SECONDS=0
run_suite() {
    local mode=$1 url=$2 ca=${3:-} dir=$OUT/$1 t0 t1 rc=0 pid host=()
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ -n "$ca" ]; then
        host=(--hostname "$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname)' "$url")")
    fi
    python3 "$HERE/report.py" spec --cases-file "$HERE/cases.json" --set "$SET" \
        --outdir "$dir" --agent "$mode" --url "$url" "${host[@]+"${host[@]}"}" > "$WORK/spec-$mode.json"
    log "$mode: fuzzingclient against $url ($SET cases${ca:+, certificate verified against $ca})"
    t0=$(date +%s.%N)
    # Run from the work dir: wstest may drop files in its working directory.
    (cd "$WORK" && if [ -n "$ca" ]; then export SSL_CERT_FILE=$ca; fi && exec timeout "$SUITE_TIMEOUT" \
        "$VENV/wstest-venv/bin/wstest" -m fuzzingclient -s "$WORK/spec-$mode.json") \
        > "$WORK/wstest-$mode.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    stop "$pid"
    t1=$(date +%s.%N)
    if [ $rc -ne 0 ] || [ ! -s "$dir/index.json" ]; then
        tail -30 "$WORK/wstest-$mode.log" >&2 || true
        [ $rc -eq 124 ] && die "$mode: the suite did not finish within $SUITE_TIMEOUT s"
        die "$mode: wstest exited $rc or wrote no $dir/index.json"
    fi
    local secs
    secs=$(python3 -c "print(round($t1 - $t0, 1))")
    SUITE_SECONDS=$(python3 -c "print(round($SUITE_SECONDS + $secs, 1))")
    log "$mode: done in ${secs} s; report $dir/index.html"
}

case $SET in
    full) SUITE_TIMEOUT=900 ;;
    smoke) SUITE_TIMEOUT=240 ;;
esac

setup_suite

# Release binaries: what ships, and fast enough that the big-message cases (9.*) are not
# slowed by the build profile. In CI this is a no-op: scripts/bench.sh --smoke has just
# run the same command. --debug: the debug binaries `cargo test` builds anyway.
log "building ($PROFILE): wsedge, wsedge-bench"
if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release -q -p wsedge -p wsedge-bench) || die "build failed"
else
    (cd "$ROOT" && cargo build -q -p wsedge -p wsedge-bench) || die "build failed"
fi
for b in wsedge wsedge-origin; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b after the build"
done

start origin "$BIN/wsedge-origin" --listen 127.0.0.1:0
ORIGIN_PID=$STARTED
ORIGIN=$(listening_addr origin "$ORIGIN_PID" "wsedge-origin: listening on")
log "echo origin on $ORIGIN"

RUNS=("direct=$OUT/direct")
SKIPPED=()
run_suite direct "ws://$ORIGIN"

for mode in "${MODE_LIST[@]}"; do
    cfg=$WORK/wsedge-$mode.toml
    scheme=ws
    ca=
    if [ "$mode" = wss ]; then
        # wss://: the same relay (buffered) behind a TLS listener instead of the plain one,
        # with a CA and leaf made now (never committed): the ECDSA P-256 leaf for localhost,
        # 127.0.0.1 and ::1, served to clients without SNI (the suite sends none to an IP).
        "$ROOT/scripts/dev-certs.sh" "$WORK/certs" 2> "$WORK/dev-certs.log" \
            || { cat "$WORK/dev-certs.log" >&2; die "scripts/dev-certs.sh failed"; }
        sed -e "s/@ORIGIN@/$ORIGIN/" -e "s/@RELAY@/buffered/" \
            -e 's/^listen = \["127.0.0.1:0"\]$/listen = []/' "$HERE/wsedge.toml.in" > "$cfg"
        cat >> "$cfg" <<EOF

[[certificate]]
id = "localhost"
cert = "$WORK/certs/localhost.pem"
key = "$WORK/certs/localhost.key"
default = true

[[tls_listener]]
listen = ["127.0.0.1:0"]
EOF
        grep -q '^listen = \[\]$' "$cfg" || die "wss: could not turn the plain listener off in $cfg"
        scheme=wss
        ca=$WORK/certs/ca.pem
    elif [ "$mode" = echo ]; then
        # The edge's own echo function: the same file with the route answered by wsedge.
        sed -e '/^origins = /d' -e 's/^relay = .*/function = "echo"/' "$HERE/wsedge.toml.in" > "$cfg"
    elif [ "$mode" = js ]; then
        # The JavaScript echo (the shipped example), with room for the 16 MiB messages of 9.*
        # (a message is in the runtime as a string or an ArrayBuffer, and the copy it sends).
        sed -e '/^origins = /d' \
            -e "s|^relay = .*|function = \"js\"\nscript = \"$ROOT/docs/examples/functions/echo.js\"\nmemory_limit = 268435456|" \
            "$HERE/wsedge.toml.in" > "$cfg"
    else
        sed -e "s/@ORIGIN@/$ORIGIN/" -e "s/@RELAY@/$mode/" "$HERE/wsedge.toml.in" > "$cfg"
    fi
    # A relay mode this build does not know is rejected by the config check. "frames" is
    # still being built, so it may legitimately be missing; buffered and splice may not.
    if ! "$BIN/wsedge" --check --config "$cfg" > "$WORK/check-$mode.log" 2>&1; then
        if [ "$mode" = frames ]; then
            banner "frames: not supported by this build, skipped (wsedge --check: $(grep . "$WORK/check-$mode.log" | tail -1))"
            SKIPPED+=("$mode")
            continue
        fi
        cat "$WORK/check-$mode.log" >&2
        die "wsedge rejects the $mode config"
    fi
    start "wsedge-$mode" "$BIN/wsedge" --config "$cfg"
    pid=$STARTED
    addr=$(listening_addr "wsedge-$mode" "$pid" "wsedge: listening on")
    run_suite "$mode" "$scheme://$addr" "$ca"
    kill -0 "$pid" 2>/dev/null || die "wsedge ($mode) died during the suite; see $WORK/wsedge-$mode.log"
    stop "$pid"
    RUNS+=("$mode=$OUT/$mode")
done

# The origin must have survived every run: a crash would show up as failures everywhere.
kill -0 "$ORIGIN_PID" 2>/dev/null || die "the echo origin died during the runs; see $WORK/origin.log"
stop "$ORIGIN_PID"

printf '\n== Autobahn|Testsuite %s, %s cases, %s s of suite time\n\n' "$SUITE_VERSION" "$SET" "$SUITE_SECONDS"
skip_args=()
for m in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do skip_args+=(--skipped "$m"); done
for m in "${MODE_LIST[@]}"; do
    case "$m" in echo|js) skip_args+=(--endpoint "$m") ;; esac
done
rc=0
python3 "$HERE/report.py" compare "${skip_args[@]+"${skip_args[@]}"}" \
    --markdown "$OUT/summary.md" "${RUNS[@]}" || rc=$?
for m in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do
    banner "$m: not supported by this build, skipped (NOT counted as passing)"
done
if [ $rc -ne 0 ]; then
    die "conformance check failed: FAILED cases or behaviour differing from the direct run (above)"
fi
if [ ${#SKIPPED[@]} -gt 0 ]; then
    log "the modes that ran conform; NOT run (not supported by this build): ${SKIPPED[*]}"
else
    log "all runs conform: no FAILED case, every mode matches the direct run"
fi
