#!/usr/bin/env bash
# A real browser through wsedge: headless Chromium loads a page served through the edge (a
# plain HTTP route to a static origin), the page opens a WebSocket to the broadcast channel
# `news` on the same edge, and a second client (scripts/browser/ws_publish.py, raw mode)
# publishes a message there once the page has announced itself. Passes only if the page's
# DOM, dumped by Chromium, shows the published message.
#
# The message is published with `wsedgectl --dataplane SOCKET publish news MESSAGE` (the
# dataplane's control socket, no daemon), run by the helper client as soon as the page has
# announced itself on the channel; the helper, subscribed too, checks the message comes back.
#
#   scripts/browser-check.sh [--smoke] [--keep]
#
#   --smoke   what CI runs (scripts/test.sh): the same check, quieter (the DOM is printed
#             only on failure)
#   --keep    keep the work directory (config, page, process logs) even on success
#
# Installs Chromium with apt-get when it is missing (needs root); fails loudly otherwise.
# Builds wsedge (debug profile, reused from `cargo test`). Every process is started here,
# recorded by pid, and only those pids are stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail

SMOKE=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "browser-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/browser
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
START=$(date +%s)

log() { printf '[browser-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
banner() { printf '\n!!!!!!!!!!\n!!! %s\n!!!!!!!!!!\n\n' "$*" >&2; }
die() { banner "browser-check FAILED: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (static origin and publisher)"
# The interpreter itself, not a version manager's shim (pyenv's costs ~1 s per start).
PY=$(python3 -c 'import sys; print(sys.executable)')

# --- Chromium ---------------------------------------------------------------------------
find_chromium() {
    for c in chromium chromium-browser google-chrome; do
        if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
    done
    return 1
}
if ! CHROMIUM=$(find_chromium); then
    log "Chromium not found: installing it (apt-get install -y chromium)"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "Chromium is missing and cannot be installed here (needs root and apt-get)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq chromium >&2 || die "apt-get install chromium failed"
    CHROMIUM=$(find_chromium) || die "Chromium still missing after apt-get install"
fi
log "browser: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"

# --- wsedge -------------------------------------------------------------------------------
log "building wsedge and wsedgectl (debug)"
(cd "$ROOT" && cargo build -q -p wsedge -p wsedgectl) || die "cargo build failed"
WSEDGE=$CARGO_TARGET_DIR/debug/wsedge
WSEDGECTL=$CARGO_TARGET_DIR/debug/wsedgectl
[ -x "$WSEDGE" ] || die "no binary at $WSEDGE"
[ -x "$WSEDGECTL" ] || die "no binary at $WSEDGECTL"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsedge-browser.XXXXXX")
PROC_LOG_DIR=$WORK
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
cleanup() {
    local rc=$?
    stop_all
    if [ "$rc" = 0 ] && [ "$KEEP" = 0 ]; then
        rm -rf "$WORK"
    else
        log "work directory kept: $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the static origin (the page) ---------------------------------------------------------
mkdir -p "$WORK/www"
cp "$HERE/page.html" "$WORK/www/index.html"
HTTP_PORT=$(free_port)
"$PY" "$HERE/origin.py" "$HTTP_PORT" "$WORK/www" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)

# --- wsedge: the page through a plain route, the channel on /ch/ ---------------------------
cat >"$WORK/wsedge.toml" <<EOF
[dataplane]
listen = ["127.0.0.1:0"]
workers = 2
drain_timeout = "1s"

[access_log]
target = "stdout"

[control]
socket = "$WORK/dataplane.sock"

[[route]]
name = "page"
path_prefix = "/"
origins = ["127.0.0.1:$HTTP_PORT"]

[[route]]
name = "news"
path_prefix = "/ch/"
function = "broadcast"
echo_to_sender = false
EOF
"$WSEDGE" --config "$WORK/wsedge.toml" >"$WORK/access.log" 2>"$WORK/wsedge.err" &
PIDS+=($!)
EDGE_PID=$!

EDGE_ADDR=
for _ in $(seq 1 200); do
    if grep -q '^wsedge: ready' "$WORK/wsedge.err" 2>/dev/null; then
        EDGE_ADDR=$(sed -n 's/^wsedge: listening on \([^ ]*\).*/\1/p' "$WORK/wsedge.err" | head -n1)
        break
    fi
    kill -0 "$EDGE_PID" 2>/dev/null || { cat "$WORK/wsedge.err" >&2; die "wsedge exited"; }
    sleep 0.05
done
[ -n "$EDGE_ADDR" ] || { cat "$WORK/wsedge.err" >&2; die "wsedge not ready within 10 s"; }
EDGE_PORT=${EDGE_ADDR##*:}
log "wsedge on $EDGE_ADDR, static origin on 127.0.0.1:$HTTP_PORT"

# The origin answers through the edge before the browser is involved.
for _ in $(seq 1 100); do
    if "$PY" - "$EDGE_PORT" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/index.html", timeout=2).read()
sys.exit(0 if b"wsedge browser check" in body else 1)
PY
    sleep 0.1
done

# --- the publisher, subscribed before the browser starts ----------------------------------
NONCE=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
MESSAGE="hello from the edge $NONCE"
"$PY" "$HERE/ws_publish.py" 127.0.0.1 "$EDGE_PORT" /ch/news "$NONCE" "$MESSAGE" \
    "$WORK/publisher.ready" 20 \
    "$WSEDGECTL" --dataplane "$WORK/dataplane.sock" publish news "$MESSAGE" \
    2>"$WORK/publisher.log" &
PUB_PID=$!
PIDS+=($PUB_PID)
for _ in $(seq 1 100); do
    [ -f "$WORK/publisher.ready" ] && break
    kill -0 "$PUB_PID" 2>/dev/null || break
    sleep 0.05
done
[ -f "$WORK/publisher.ready" ] || { cat "$WORK/publisher.log" >&2; die "the publisher did not subscribe"; }

# --- the browser ----------------------------------------------------------------------------
URL="http://127.0.0.1:$EDGE_PORT/index.html?nonce=$NONCE"
log "chromium --dump-dom $URL"
set +e
timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic \
    --disable-background-networking --disable-component-update --disable-sync --no-first-run \
    --disable-dev-shm-usage --user-data-dir="$WORK/profile" \
    --dump-dom "$URL" >"$WORK/dom.html" 2>"$WORK/chromium.log"
CHROME_RC=$?
wait "$PUB_PID"
PUB_RC=$?
set -e

page_part() { # ID: the text inside the element with that id in the dumped DOM
    "$PY" -c 'import html, re, sys
m = re.search(r"<(\w+) id=\"%s\">(.*?)</\1>" % sys.argv[2], open(sys.argv[1]).read(), re.S)
print(html.unescape(m.group(2)).strip() if m else "")' "$WORK/dom.html" "$1"
}
SAW=$(page_part state)
RECEIVED=$(page_part log)
log "chromium done (exit $CHROME_RC)"
log "page state: ${SAW:-<none>}"
log "page received: ${RECEIVED:-<nothing>}"
log "$(tr '\n' ' ' <"$WORK/publisher.log")"

fail=
grep -qF "received: $MESSAGE" "$WORK/dom.html" || fail="the page's DOM does not show \"$MESSAGE\""
[ -z "$fail" ] && [ "$CHROME_RC" != 0 ] && fail="chromium exited with $CHROME_RC"
[ -z "$fail" ] && [ "$PUB_RC" != 0 ] && fail="the publisher failed (exit $PUB_RC)"
if [ -n "$fail" ]; then
    echo "--- dumped DOM ---" >&2; cat "$WORK/dom.html" >&2
    echo "--- chromium (last 20 lines) ---" >&2; tail -n 20 "$WORK/chromium.log" >&2
    echo "--- wsedge access log ---" >&2; cat "$WORK/access.log" >&2
    die "$fail"
fi
[ "$SMOKE" = 1 ] || { echo "--- dumped DOM ---" >&2; cat "$WORK/dom.html" >&2; }
log "passed in $(( $(date +%s) - START )) s: the browser received \"$MESSAGE\" through wsedge"
