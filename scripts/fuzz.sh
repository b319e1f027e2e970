#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (see docs/reliability.md).
#
#   scripts/fuzz.sh SECONDS             every target under libFuzzer for SECONDS each
#   scripts/fuzz.sh SECONDS TARGET...   only these targets
#   scripts/fuzz.sh --smoke [SECONDS]   stable toolchain, no libFuzzer: replays the committed
#                                       corpus and runs deterministic mutations for SECONDS
#                                       (default 3) per target, as a normal test binary (CI;
#                                       dev profile, main target directory)
#
# libFuzzer mode needs cargo-fuzz (installed with `cargo install cargo-fuzz` if missing) and
# a nightly toolchain; without nightly it uses stable with RUSTC_BOOTSTRAP=1. New inputs go to
# fuzz/corpus/TARGET/ (ignored by git except the seed-* files); crashes to fuzz/artifacts/.
# A summary line per target ("fuzz TARGET: N execs in S s, ...") is printed at the end.
# Environment: CARGO_TARGET_DIR (default fuzz/target).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
TARGETS=(handshake response config session frames_relay frame path endpoint channels wire firewall tls since)

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

[ $# -ge 1 ] || usage

if [ "$1" = "--smoke" ]; then
    secs=${2:-3}
    cd "$FUZZ"
    echo "fuzz smoke: ${#TARGETS[@]} targets x ${secs} s (corpus replay + deterministic mutations)"
    # The dev profile (overflow checks and debug assertions on) in the main target directory,
    # where scripts/test.sh has built the same dependencies: no second build for CI.
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} WSEDGE_FUZZ_SMOKE_SECS="$secs" \
        cargo test --no-default-features --test smoke -- --test-threads 1 --nocapture
    exit $?
fi

case "$1" in
    ''|*[!0-9]*) usage ;;
esac
secs=$1
shift
if [ $# -gt 0 ]; then
    TARGETS=("$@")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Nightly if rustup has it, else stable with RUSTC_BOOTSTRAP=1 (-Z flags allowed).
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi

target_dir=${CARGO_TARGET_DIR:-$FUZZ/target}
cd "$FUZZ"
cargo "${toolchain[@]}" fuzz build --target-dir "$target_dir"

summary=()
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    echo "fuzz: $t for ${secs} s"
    set +e
    cargo "${toolchain[@]}" fuzz run --target-dir "$target_dir" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -max_len=65536 \
        2>&1 | tee "$log" | { grep -E '^(#[0-9]+.*(pulse|DONE)|==|SUMMARY|Done)' || true; }
    # The fuzzer's own status (a `|| true` after the whole pipeline would reset PIPESTATUS
    # and report every crash as "no crash").
    rc=${PIPESTATUS[0]}
    set -e
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    cov=$(grep -E '^#[0-9]+' "$log" | grep -oE 'cov: [0-9]+' | tail -1 | awk '{print $2}')
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        result="no crash"
    else
        result="FAILED (exit $rc, see fuzz/artifacts/$t/)"
        status=1
    fi
    summary+=("fuzz $t: ${execs:-?} execs in ${secs} s, cov ${cov:-?}, corpus $corpus, $result")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $status
