#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, unit and integration tests
# (the real binaries between real peers), and the smoke runs of the benchmark and fuzz
# scripts. `.ci/run` runs exactly this after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build (the binaries the integration tests start: wsedge, wsedgectl, ...)"
cargo build --workspace --bins

step "cargo test (unit + integration)"
cargo test --workspace

for script in scripts/fuzz.sh scripts/bench.sh scripts/autobahn.sh scripts/browser-check.sh scripts/soak.sh scripts/package-check.sh; do
  if [ -x "$script" ]; then
    step "$script --smoke"
    "$script" --smoke
  fi
done

step "all checks passed"
