# Processes a script starts, sourced by bench.sh, bench-tls.sh, bench-many-hosts.sh, soak.sh,
# autobahn.sh and browser-check.sh.
# Every pid is recorded in PIDS and only those are ever stopped. The sourcing script sets
# PROC_LOG_DIR (where each process's output goes) and defines `die` (and `log`, for end_run).

PIDS=()

# start NAME CMD...: runs CMD in the background, output to $PROC_LOG_DIR/NAME.log; sets STARTED.
start() {
    local name=$1; shift
    "$@" > "$PROC_LOG_DIR/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# stop PID: stops one process we started, waits for it, and forgets it.
stop() {
    local pid=$1 keep=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# stop_all: stops every process we started (all signalled first, then all waited for).
stop_all() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
}

# end_run RC WHERE: the end of a run whose work directory is $RUN (an EXIT trap's body):
# stops every process we started, keeps the run's logs and configurations in $OUT/logs,
# removes $RUN, and when RC is not 0 says so and WHERE to look; exits with RC.
end_run() {
    local rc=$1 where=$2
    stop_all
    cp "$RUN"/*.log "$RUN"/*.toml "$OUT/logs/" 2>/dev/null || true
    rm -rf "$RUN"
    [ "$rc" -eq 0 ] || log "exit $rc; $where"
    exit "$rc"
}

# wait_port PORT PID NAME: until PORT accepts, or fail loudly if PID died / 10 s passed.
wait_port() {
    local port=$1 pid=$2 name=$3 i
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$PROC_LOG_DIR/$name.log" >&2 || true
            die "$name exited before listening on $port"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    tail -20 "$PROC_LOG_DIR/$name.log" >&2 || true
    die "$name is not listening on $port after 10 s"
}
