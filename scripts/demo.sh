#!/usr/bin/env bash
# Runs wsedge on the shipped example (docs/examples/demo.toml) in front of the bundled demo
# origin. Open http://127.0.0.1:8080/ in a browser (the page opens a WebSocket through
# wsedge), or: websocat ws://127.0.0.1:8080/ws. Ctrl-C stops both.
#
#   scripts/demo.sh --tls   the same over TLS (docs/examples/tls.toml): wsedge terminates
#                           https:// and wss:// on 127.0.0.1:8443 with the throwaway
#                           certificates of scripts/dev-certs.sh (trust target/dev-certs/ca.pem)
set -euo pipefail
cd "$(dirname "$0")/.."

config=docs/examples/demo.toml
url=http://127.0.0.1:8080/
ws=ws://127.0.0.1:8080/ws
if [ "${1:-}" = "--tls" ]; then
    scripts/dev-certs.sh
    config=docs/examples/tls.toml
    url=https://localhost:8443/
    ws=wss://localhost:8443/ws
elif [ -n "${1:-}" ]; then
    echo "usage: scripts/demo.sh [--tls]" >&2
    exit 2
fi

cargo build --release -q -p wsedge -p wsedge-bench
bin=target/release

"$bin/wsedge-origin" --listen 127.0.0.1:9001 &
origin=$!
"$bin/wsedge" --config "$config" &
edge=$!
trap 'kill "$edge" "$origin" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

echo "demo: open $url or connect a WebSocket client to $ws" >&2
if [ "$config" = docs/examples/tls.toml ]; then
    echo "demo: the browser (or client) must trust target/dev-certs/ca.pem, e.g." >&2
    echo "demo:   curl --cacert target/dev-certs/ca.pem $url" >&2
fi
echo "demo: access log lines appear below as connections end; Ctrl-C to stop" >&2
wait "$edge"
