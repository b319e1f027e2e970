#!/usr/bin/env bash
# A real browser through wsedge: headless Chromium loads a page served through the edge (a
# plain HTTP route to a static origin), the page opens a WebSocket to the broadcast channel
# `news` on the same edge, and a second client (scripts/browser/ws_publish.py, raw mode)
# publishes a message there once the page has announced itself. Passes only if the page's
# DOM, dumped by Chromium, shows the published message.
#
# Two passes against the same wsedge: `plain` (http:// page, ws://) and `tls` (https:// page
# from wsedge's [[tls_listener]], wss://). For the TLS pass a CA and a leaf for localhost are
# made at run time (scripts/dev-certs.sh, in the work directory: no key is committed), and
# Chromium trusts that CA through an NSS database in a HOME of its own, so it verifies the
# chain and the name as for any site (no --ignore-certificate-errors*). The TLS pass also
# asserts that wsedge's access log shows the page's WebSocket over TLS with SNI localhost.
#
# The message is published with `wsedgectl --dataplane SOCKET publish news MESSAGE` (the
# dataplane's control socket, no daemon), run by the helper client as soon as the page has
# announced itself on the channel; the helper, subscribed too, checks the message comes back.
#
#   scripts/browser-check.sh [--smoke] [--plain|--tls] [--keep]
#
#   --smoke   what CI runs (scripts/test.sh): both passes, quieter (the DOM is printed
#             only on failure)
#   --plain   only the ws:// pass
#   --tls     only the wss:// pass
#   --keep    keep the work directory (config, page, certificates, process logs) even on
#             success
#
# Installs Chromium and certutil (libnss3-tools) with apt-get when missing (needs root);
# fails loudly otherwise.
# Builds wsedge (debug profile, reused from `cargo test`). Every process is started here,
# recorded by pid, and only those pids are stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail

SMOKE=0
KEEP=0
PASSES="plain tls"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --keep) KEEP=1 ;;
        --plain) PASSES=plain ;;
        --tls) PASSES=tls ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
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
APT_UPDATED=0
apt_install() { # PACKAGE WHAT
    log "$2 not found: installing it (apt-get install -y $1)"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "$2 is missing and cannot be installed here (needs root and apt-get)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    apt-get install -y -qq "$1" >&2 || die "apt-get install $1 failed"
}
if ! CHROMIUM=$(find_chromium); then
    apt_install chromium Chromium
    CHROMIUM=$(find_chromium) || die "Chromium still missing after apt-get install"
fi
case " $PASSES " in
    *" tls "*)
        command -v openssl >/dev/null || apt_install openssl openssl
        command -v certutil >/dev/null || apt_install libnss3-tools "certutil (NSS tools)"
        command -v certutil >/dev/null || die "certutil still missing after apt-get install"
        ;;
esac
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

# --- the TLS pass's certificates and the browser's trust ---------------------------------
# A fresh CA and leaf (scripts/dev-certs.sh into the work directory), and an NSS database in
# a HOME of Chromium's own with that CA trusted for servers: Chromium on Linux takes locally
# trusted anchors from $HOME/.pki/nssdb, then verifies the chain and the name itself.
TLS_CONFIG=
case " $PASSES " in
    *" tls "*)
        "$ROOT/scripts/dev-certs.sh" "$WORK/certs" 2>"$WORK/dev-certs.log" \
            || { cat "$WORK/dev-certs.log" >&2; die "scripts/dev-certs.sh failed"; }
        mkdir -p "$WORK/home/.pki/nssdb"
        certutil -d "sql:$WORK/home/.pki/nssdb" -N --empty-password >"$WORK/certutil.log" 2>&1 \
            && certutil -d "sql:$WORK/home/.pki/nssdb" -A -n "wsedge browser-check CA" -t "C,," \
                -i "$WORK/certs/ca.pem" >>"$WORK/certutil.log" 2>&1 \
            || { cat "$WORK/certutil.log" >&2; die "certutil could not make the NSS database"; }
        TLS_CONFIG="
[[certificate]]
id = \"localhost\"
cert = \"$WORK/certs/localhost.pem\"
key = \"$WORK/certs/localhost.key\"

[[tls_listener]]
listen = [\"127.0.0.1:0\"]
"
        ;;
esac

# --- wsedge: the page through a plain route, the channel on /ch/ ---------------------------
# One wsedge for both passes: a plain listener and (for the TLS pass) a TLS one, same routes.
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
$TLS_CONFIG
EOF
"$WSEDGE" --config "$WORK/wsedge.toml" >"$WORK/access.log" 2>"$WORK/wsedge.err" &
PIDS+=($!)
EDGE_PID=$!

EDGE_ADDR=
for _ in $(seq 1 200); do
    if grep -q '^wsedge: ready' "$WORK/wsedge.err" 2>/dev/null; then
        EDGE_ADDR=$(sed -n 's/^wsedge: listening on \([^ ]*\)$/\1/p' "$WORK/wsedge.err" | head -n1)
        TLS_ADDR=$(sed -n 's/^wsedge: listening on \([^ ]*\) (tls)$/\1/p' "$WORK/wsedge.err" | head -n1)
        break
    fi
    kill -0 "$EDGE_PID" 2>/dev/null || { cat "$WORK/wsedge.err" >&2; die "wsedge exited"; }
    sleep 0.05
done
[ -n "$EDGE_ADDR" ] || { cat "$WORK/wsedge.err" >&2; die "wsedge not ready within 10 s"; }
EDGE_PORT=${EDGE_ADDR##*:}
if [ -n "$TLS_CONFIG" ]; then
    [ -n "$TLS_ADDR" ] || { cat "$WORK/wsedge.err" >&2; die "wsedge reported no TLS listener"; }
    TLS_PORT=${TLS_ADDR##*:}
    log "wsedge on $EDGE_ADDR and $TLS_ADDR (tls), static origin on 127.0.0.1:$HTTP_PORT"
else
    log "wsedge on $EDGE_ADDR, static origin on 127.0.0.1:$HTTP_PORT"
fi

# The origin answers through the edge before the browser is involved (over TLS too, trusting
# the run's CA only).
for _ in $(seq 1 100); do
    if "$PY" - "$EDGE_PORT" "${TLS_PORT:-}" "$WORK/certs/ca.pem" <<'PY' 2>/dev/null; then break; fi
import ssl, sys, urllib.request
def page(url, **kw):
    return b"wsedge browser check" in urllib.request.urlopen(url, timeout=2, **kw).read()
ok = page(f"http://127.0.0.1:{sys.argv[1]}/index.html")
if sys.argv[2]:
    ctx = ssl.create_default_context(cafile=sys.argv[3])
    ok = ok and page(f"https://localhost:{sys.argv[2]}/index.html", context=ctx)
sys.exit(0 if ok else 1)
PY
    sleep 0.1
done

page_part() { # DOM ID: the text inside the element with that id in the dumped DOM
    "$PY" -c 'import html, re, sys
m = re.search(r"<(\w+) id=\"%s\">(.*?)</\1>" % sys.argv[2], open(sys.argv[1]).read(), re.S)
print(html.unescape(m.group(2)).strip() if m else "")' "$1" "$2"
}

# run_pass NAME URL_BASE [HOME]: publisher subscribed, Chromium loads URL_BASE/index.html,
# the page's WebSocket (ws:// or wss://, after the page's own scheme) gets the message.
run_pass() {
    local name=$1 base=$2 home=${3:-} nonce message url chrome_rc pub_rc saw received fail pub_pid
    nonce=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    message="hello from the edge $nonce"
    # --- the publisher, subscribed (plain ws://, same channel) before the browser starts
    "$PY" "$HERE/ws_publish.py" 127.0.0.1 "$EDGE_PORT" /ch/news "$nonce" "$message" \
        "$WORK/publisher-$name.ready" 20 \
        "$WSEDGECTL" --dataplane "$WORK/dataplane.sock" publish news "$message" \
        2>"$WORK/publisher-$name.log" &
    pub_pid=$!
    PIDS+=($pub_pid)
    for _ in $(seq 1 100); do
        [ -f "$WORK/publisher-$name.ready" ] && break
        kill -0 "$pub_pid" 2>/dev/null || break
        sleep 0.05
    done
    [ -f "$WORK/publisher-$name.ready" ] \
        || { cat "$WORK/publisher-$name.log" >&2; die "$name: the publisher did not subscribe"; }

    # --- the browser
    url="$base/index.html?nonce=$nonce"
    log "$name: chromium --dump-dom $url"
    set +e
    local env_home=()
    [ -z "$home" ] || env_home=(HOME="$home")
    env "${env_home[@]+"${env_home[@]}"}" timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu \
        --disable-quic --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --disable-dev-shm-usage \
        --user-data-dir="$WORK/profile-$name" \
        --dump-dom "$url" >"$WORK/dom-$name.html" 2>"$WORK/chromium-$name.log"
    chrome_rc=$?
    wait "$pub_pid"
    pub_rc=$?
    set -e

    saw=$(page_part "$WORK/dom-$name.html" state)
    received=$(page_part "$WORK/dom-$name.html" log)
    log "$name: chromium done (exit $chrome_rc)"
    log "$name: page state: ${saw:-<none>}"
    log "$name: page received: ${received:-<nothing>}"
    log "$name: $(tr '\n' ' ' <"$WORK/publisher-$name.log")"

    fail=
    grep -qF "received: $message" "$WORK/dom-$name.html" || fail="the page's DOM does not show \"$message\""
    [ -z "$fail" ] && [ "$chrome_rc" != 0 ] && fail="chromium exited with $chrome_rc"
    [ -z "$fail" ] && [ "$pub_rc" != 0 ] && fail="the publisher failed (exit $pub_rc)"
    if [ -z "$fail" ] && [ "$name" = tls ]; then
        # The page's WebSocket went over TLS to wsedge: its access-log line (written when
        # the connection closes, so wait a little) has the handshake's SNI and version.
        local found=0
        for _ in $(seq 1 50); do
            if "$PY" - "$WORK/access.log" <<'PY'; then found=1; break; fi
import json, sys
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("route") == "news" and e.get("status") == 101 and e.get("sni") == "localhost" \
            and e.get("tls_version", "").startswith("TLSv1."):
        sys.exit(0)
sys.exit(1)
PY
            sleep 0.1
        done
        [ "$found" = 1 ] || fail="no access-log line of a wss:// connection (route news, 101, SNI localhost)"
    fi
    if [ -n "$fail" ]; then
        echo "--- dumped DOM ($name) ---" >&2; cat "$WORK/dom-$name.html" >&2
        echo "--- chromium (last 20 lines) ---" >&2; tail -n 20 "$WORK/chromium-$name.log" >&2
        echo "--- wsedge access log ---" >&2; cat "$WORK/access.log" >&2
        die "$name: $fail"
    fi
    [ "$SMOKE" = 1 ] || { echo "--- dumped DOM ($name) ---" >&2; cat "$WORK/dom-$name.html" >&2; }
    log "$name: passed: the browser received \"$message\" through wsedge ($base)"
}

for pass in $PASSES; do
    case $pass in
        plain) run_pass plain "http://127.0.0.1:$EDGE_PORT" ;;
        # localhost, not 127.0.0.1: the name is what the certificate is checked against and
        # what Chromium sends as SNI (an address would get no SNI).
        tls) run_pass tls "https://localhost:$TLS_PORT" "$WORK/home" ;;
    esac
done
log "passed in $(( $(date +%s) - START )) s (passes: $PASSES)"
