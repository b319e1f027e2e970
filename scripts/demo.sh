#!/usr/bin/env bash
# Runs wsedge on the shipped example (docs/examples/demo.toml) in front of the bundled demo
# origin. Open http://127.0.0.1:8080/ in a browser (the page opens a WebSocket through
# wsedge), or: websocat ws://127.0.0.1:8080/ws. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p wsedge -p wsedge-bench
bin=target/release

"$bin/wsedge-origin" --listen 127.0.0.1:9001 &
origin=$!
"$bin/wsedge" --config docs/examples/demo.toml &
edge=$!
trap 'kill "$edge" "$origin" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

echo "demo: open http://127.0.0.1:8080/ or connect a WebSocket client to ws://127.0.0.1:8080/ws" >&2
echo "demo: access log lines appear below as connections end; Ctrl-C to stop" >&2
wait "$edge"
