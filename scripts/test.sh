#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints (main workspace and fuzz crate),
# the minimum Rust version, the dependency policy, docs, unit and integration tests (the real
# binaries between real peers), Miri on the pure crates, and the smoke runs of the benchmark
# and fuzz scripts. `.ci/run` runs exactly this after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

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

step "fuzz crate (own workspace): fmt, clippy -D warnings, unit tests"
(cd fuzz && cargo fmt -- --check \
    && cargo clippy --no-default-features --all-targets --locked -- -D warnings \
    && cargo test --release --no-default-features --locked --lib)

step "cargo build (the binaries the integration tests start: wsedge, wsedgectl, ...)"
cargo build --workspace --bins

step "cargo test (unit + integration)"
cargo test --workspace

step "scripts/miri.sh (pure crates under Miri; says so when Miri is not installed)"
scripts/miri.sh

for script in scripts/fuzz.sh scripts/bench.sh scripts/autobahn.sh scripts/browser-check.sh scripts/soak.sh scripts/package-check.sh; do
  if [ -x "$script" ]; then
    step "$script --smoke"
    "$script" --smoke
  fi
done

step "all checks passed"
