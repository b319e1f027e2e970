#!/usr/bin/env bash
# The kernel settings and limits an edge host running wsedge wants, each with why.
#
#   scripts/tune-host.sh            print each setting: the wanted value, the current one, why
#   scripts/tune-host.sh --apply    also set them now (sysctl -w) and for every boot
#                                   (/etc/sysctl.d/60-wsedge.conf); needs root
#   scripts/tune-host.sh --file F   with --apply: write F instead of /etc/sysctl.d/60-wsedge.conf
#
# Values are floors: a setting already higher (or, for ranges, wider) is left as it is. The
# process limits (LimitNOFILE, LimitMEMLOCK) are the systemd units' business and are shown
# for reference only. Settings this kernel lacks are shown as absent and skipped. Exit status:
# 0, or 1 when --apply could not set one, 2 on a usage error.
set -euo pipefail

APPLY=0
FILE=/etc/sysctl.d/60-wsedge.conf
while [ $# -gt 0 ]; do
    case "$1" in
        --apply) APPLY=1 ;;
        --file) FILE=${2:?--file needs a path}; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "tune-host.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$APPLY" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "tune-host.sh: --apply needs root" >&2
    exit 2
fi

# key|wanted|kind|why   (kind: min = at least this number, min0 = at least this number or 0
#                        for no limit, range = at least this wide, exact = this value)
SETTINGS=(
"fs.file-max|4194304|min|every client and every origin connection is a descriptor; the system-wide cap must sit far above the sum of the services' LimitNOFILE"
"fs.nr_open|1048576|min|the largest LimitNOFILE a process may get: wsedge.service asks for 1048576"
"net.core.somaxconn|65535|min|the cap on each listener's accept queue: wsedge asks for 4096 per worker socket, and a burst of reconnects after a restart must queue, not be refused"
"net.ipv4.tcp_max_syn_backlog|65535|min|half-open connections kept while the handshake completes: the same reconnect bursts"
"net.core.netdev_max_backlog|16384|min|packets queued between the NIC and the stack when a core is busy relaying"
"net.ipv4.ip_local_port_range|1024 65535|range|each origin connection takes a local port towards its origin: a wide range allows ~64k live connections per origin address"
"net.ipv4.tcp_tw_reuse|1|exact|reuse TIME_WAIT ports for new outgoing (origin) connections when it is safe by timestamps, so churn does not exhaust the port range"
"net.ipv4.tcp_fin_timeout|15|max|how long an orphaned connection waits in FIN_WAIT_2: clients that vanish without closing should not pin memory for a minute"
"net.ipv4.tcp_migrate_req|1|exact|when one SO_REUSEPORT socket closes (a drain, a restart, a worker exiting), its queued connections move to another socket of the group instead of being reset (Linux 5.14+)"
"net.ipv4.tcp_keepalive_time|600|max|idle WebSockets through NATs and load balancers: find dead peers in minutes, not after two hours"
"net.core.rmem_max|16777216|min|lets relays with large buffers (relay.buffer_size, splice pipes) get big socket buffers when they ask"
"net.core.wmem_max|16777216|min|the same for sending"
"fs.pipe-user-pages-soft|1048576|min0|pages of pipe capacity a user without CAP_SYS_RESOURCE may hold (default 16384 = 64 MiB): wsedge.service runs as the user wsedge, each splice direction with bytes in flight holds a relay.pipe_size pipe (64 KiB) and each worker keeps up to relay.pipe_pool (256) free ones, so four workers can reach the default limit; past the limit new pipes get 8 KiB and wsedge relays those directions buffered (counted in wsedge_splice_fallbacks_total). Capacity, not memory: an empty pipe holds no pages"
"vm.max_map_count|262144|min|each io_uring ring and provided-buffer ring is a mapping; many workers with big rings need more than the default 65530"
)

current() { sysctl -n "$1" 2>/dev/null | tr -s '\t ' ' ' || true; }

ok_value() { # kind wanted have
    local kind=$1 wanted=$2 have=$3
    [ -n "$have" ] || return 1
    case "$kind" in
        min) [ "$have" -ge "$wanted" ] ;;
        min0) [ "$have" = 0 ] || [ "$have" -ge "$wanted" ] ;;
        max) [ "$have" -le "$wanted" ] ;;
        exact) [ "$have" = "$wanted" ] ;;
        range)
            local wl wh hl hh
            read -r wl wh <<<"$wanted"
            read -r hl hh <<<"$have"
            [ "$hl" -le "$wl" ] && [ "$hh" -ge "$wh" ] ;;
    esac
}

status=0
conf=""
printf '%-32s %-14s %-14s %s\n' SETTING WANTED CURRENT WHY
for entry in "${SETTINGS[@]}"; do
    IFS='|' read -r key wanted kind why <<<"$entry"
    have=$(current "$key")
    if [ -z "$have" ]; then
        mark="absent"
    elif ok_value "$kind" "$wanted" "$have"; then
        mark="ok"
    else
        mark="change"
    fi
    printf '%-32s %-14s %-14s %s\n' "$key" "$wanted" "${have:-n/a} ($mark)" "$why"
    [ "$mark" = "ok" ] && continue
    [ "$mark" = "absent" ] && continue # this kernel does not have it (e.g. tcp_migrate_req before 5.14)
    conf+="$key = $wanted"$'\n'
    if [ "$APPLY" = 1 ]; then
        if ! sysctl -q -w "$key=$wanted" >/dev/null 2>&1; then
            echo "tune-host.sh: cannot set $key (read-only here? a container?)" >&2
            status=1
        fi
    fi
done

cat <<'EOF'

Process limits (set by the systemd units, shown for reference):
  LimitNOFILE=1048576   wsedge.service: one descriptor per client and per origin socket, plus splice pipes
  LimitMEMLOCK=infinity wsedge.service: io_uring rings and buffer rings count as locked memory before Linux 5.12
  LimitNOFILE=65536     wsedgectl.service: CLI peers, etcd connections, status page clients
EOF

if [ "$APPLY" = 1 ] && [ -n "$conf" ]; then
    {
        echo "# Written by wsedge's scripts/tune-host.sh; see that script for why each is set."
        printf '%s' "$conf"
    } >"$FILE"
    echo "wrote $FILE (applied at every boot by systemd-sysctl)"
elif [ "$APPLY" = 0 ] && [ -n "$conf" ]; then
    echo
    echo "run with --apply (as root) to set the ones marked 'change'"
fi
exit "$status"
