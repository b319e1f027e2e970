#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints (main workspace and fuzz crate),
# the minimum Rust version, the dependency policy, docs, unit and integration tests (the real
# binaries between real peers), Miri on the pure crates, and the smoke runs of the benchmark
# and fuzz scripts. `.ci/run` runs exactly this after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints the time the previous one took, and the end the total: CI has 30 minutes
# on 2 cores for all of this (docs/reliability.md, "CI budget").
T0=$(date +%s)
T_STEP=$T0
step() {
    local now
    now=$(date +%s)
    printf '\n== [%4d s, +%d s] %s\n' "$((now - T0))" "$((now - T_STEP))" "$*" >&2
    T_STEP=$now
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "scripts/msrv.sh (the declared minimum Rust version holds)"
scripts/msrv.sh

step "scripts/deny.sh (licences, duplicate versions, sources; advisories where fetchable)"
scripts/deny.sh

step "cargo doc -D warnings (private items too)"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --document-private-items

# The fuzz crate is its own workspace (cargo-fuzz wants that) with the same locked versions:
# built in the main target directory, it reuses the main workspace's dependencies instead of
# compiling them all again (in CI that was a second full release build).
step "fuzz crate (own workspace): fmt, clippy -D warnings, unit tests"
(cd fuzz && export CARGO_TARGET_DIR="$PWD/../target" && cargo fmt -- --check \
    && cargo clippy --no-default-features --all-targets --locked -- -D warnings \
    && cargo test --no-default-features --locked --lib)

step "cargo build (the binaries the integration tests start: wsedge, wsedgectl, ...)"
cargo build --workspace --bins

step "cargo test (unit + integration)"
cargo test --workspace

# The quick set (wsedge-command's control-socket wire code and durations): all of
# wsedge-command takes over 7 minutes under Miri and wsedge-proto well over 10; both are run
# by hand (scripts/miri.sh; docs/reliability.md, "Miri").
step "scripts/miri.sh --quick (the control wire code under Miri; says so when Miri is not installed)"
scripts/miri.sh --quick

# The smoke runs of bench, Autobahn and soak start release binaries: in CI they are built
# without LTO and debug info (4 min 20 s cold on 2 cores here), which is enough for what the
# smokes check: the scripts work end to end, and the flood check catches gross regressions,
# not percentages. Benchmarks by hand use the shipped profile.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
for script in scripts/fuzz.sh scripts/bench.sh scripts/autobahn.sh scripts/browser-check.sh scripts/soak.sh scripts/package-check.sh; do
  if [ -x "$script" ]; then
    step "$script --smoke"
    "$script" --smoke
  fi
done

step "all checks passed"
printf 'total %d s\n' "$(( $(date +%s) - T0 ))" >&2
