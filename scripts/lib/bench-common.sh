# Shared by the benchmark scripts (bench.sh, bench-tls.sh, bench-many-hosts.sh): logging,
# port checks and the host description of a result directory. The sourcing script sets
# BENCH_TAG (the log prefix), and for write_host_txt MODE, ROUNDS and ROOT.

# log MSG...: a timestamped line on stderr.
log() { printf '[%s %s] %s\n' "${BENCH_TAG:-bench}" "$(date -u +%H:%M:%S)" "$*" >&2; }
# die MSG...: log it and exit 1 (the sourcing script's EXIT trap cleans up).
die() { log "FAILED: $*"; exit 1; }

# need_free_port PORT: fail if something already listens there (it would answer for us).
need_free_port() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 is already in use (set ORIGIN_PORT / PROXY_PORT)"
    fi
}

# write_host_txt FILE STAMP: the host, its limits and sysctls, the proxies' versions, the
# commit and the load average, as every result directory records them (the caller appends
# its own lines).
write_host_txt() {
    cat > "$1" <<HOST
date_utc: $2
mode: $MODE
kernel: $(uname -r)
cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)
memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
nofile: $(ulimit -n)
port_range: $(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr -s '\t ' ' ')
somaxconn: $(sysctl -n net.core.somaxconn 2>/dev/null)
tcp_tw_reuse: $(sysctl -n net.ipv4.tcp_tw_reuse 2>/dev/null)
nginx: $(if command -v nginx >/dev/null; then nginx -v 2>&1 | sed 's/.*nginx\///'; else echo none; fi)
haproxy: $(if command -v haproxy >/dev/null; then haproxy -v | head -1 | awk '{print $3}'; else echo none; fi)
git: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
rounds: $ROUNDS
HOST
}

# warn_if_busy: a warning when the load average is above half the cores (other work on the
# host will skew the figures).
warn_if_busy() {
    local load1 cpus
    load1=$(cut -d' ' -f1 /proc/loadavg)
    cpus=$(nproc)
    if awk -v l="$load1" -v c="$cpus" 'BEGIN { exit !(l > c / 2) }'; then
        log "warning: load average $load1 on $cpus CPUs: other work will skew the figures"
    fi
}

# install_proxies: nginx and HAProxy from the distribution's packages, when either is missing.
install_proxies() {
    if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
        log "installing nginx and haproxy from the distribution's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy \
            || die "cannot install nginx/haproxy"
    fi
}

# widen_port_range: a wide ephemeral port range for the handshake loops, as root; the old
# range goes to OLD_PORT_RANGE, which the caller's cleanup restores with restore_port_range.
OLD_PORT_RANGE=""
widen_port_range() {
    if [ "$(id -u)" = 0 ]; then
        OLD_PORT_RANGE=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
        sysctl -qw net.ipv4.ip_local_port_range="1024 65000" || OLD_PORT_RANGE=""
    fi
}
restore_port_range() {
    if [ -n "$OLD_PORT_RANGE" ]; then
        sysctl -qw net.ipv4.ip_local_port_range="$OLD_PORT_RANGE" || true
    fi
}
