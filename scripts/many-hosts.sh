#!/usr/bin/env bash
# Three wsedge "hosts" on one machine sharing a Redis (docs/broker.md): starts redis-server
# on 127.0.0.1:6379 if nothing listens there, then wsedge with docs/examples/many-hosts/
# host-1.toml, host-2.toml and host-3.toml (WebSockets on 127.0.0.1:8181-8183, publish API
# on :8191-8193, metrics on :9181-9183). Ctrl-C stops what it started.
#
#   websocat -H 'Sec-WebSocket-Protocol: wsedge.v1' ws://127.0.0.1:8182/ch/lobby
#   curl -d hello http://127.0.0.1:8191/publish/lobby
#   curl http://127.0.0.1:8193/channels/lobby
#
# Options: --release (a release build), --debug (default).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
case "${1:-}" in
    --release) profile=release ;;
    --debug | "") ;;
    *) echo "usage: $0 [--release|--debug]" >&2; exit 2 ;;
esac

if [ "$profile" = release ]; then
    cargo build --release -q -p wsedge -p wsedgectl
else
    cargo build -q -p wsedge -p wsedgectl
fi
bin=target/$profile

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "many-hosts: using the Redis already on 127.0.0.1:6379" >&2
else
    command -v redis-server >/dev/null || { echo "many-hosts: redis-server is not installed (apt install redis-server)" >&2; exit 1; }
    redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    pids+=($!)
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break
        sleep 0.1
    done
    echo "many-hosts: started redis-server on 127.0.0.1:6379" >&2
fi

for n in 1 2 3; do
    # Each line prefixed with its host; $! is wsedge itself (not the prefixing sed).
    "$bin/wsedge" --config "docs/examples/many-hosts/host-$n.toml" > >(sed -u "s/^/[host-$n] /") 2>&1 &
    pids+=($!)
done

cat >&2 <<'TXT'
many-hosts: three hosts on ws://127.0.0.1:8181/ch/, :8182/ch/, :8183/ch/
  subscribe: websocat -H 'Sec-WebSocket-Protocol: wsedge.v1' ws://127.0.0.1:8182/ch/lobby
  publish:   curl -d hello http://127.0.0.1:8191/publish/lobby
  presence:  curl http://127.0.0.1:8193/channels/lobby
  recovery:  websocat -H 'Sec-WebSocket-Protocol: wsedge.v1' ws://127.0.0.1:8181/ch/chat:room
             (a position notice first; reconnect with ?since=<offset>:<epoch> of the last message)
Ctrl-C stops them.
TXT
wait
