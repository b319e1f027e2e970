#!/usr/bin/env bash
# Runs the unit tests of the pure crates (wsedge-proto, wsedge-command) under Miri, the Rust
# interpreter that detects undefined behaviour (out-of-bounds or misaligned access, use after
# free, invalid values, data races) in the code they run: ours and their dependencies'
# (httparse's SIMD paths, regex, serde_json, base64, sha1).
#
#   scripts/miri.sh              both crates, every unit test
#   scripts/miri.sh -p wsedge-proto frame::    arguments go to `cargo miri test`
#
# Needs a nightly toolchain with the miri and rust-src components
# (rustup toolchain install nightly --component miri,rust-src). Where they cannot be
# installed it says so and exits 0 without pretending anything was checked; `--require`
# as the first argument makes that an error. docs/reliability.md, "Miri".
set -euo pipefail
cd "$(dirname "$0")/.."

require=0
if [ "${1:-}" = "--require" ]; then
    require=1
    shift
fi

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "miri: no nightly toolchain with Miri here (rustup toolchain install nightly --component miri,rust-src);"
    echo "miri: the pure crates were NOT run under Miri."
    exit $((require))
fi

# Isolation off: some command tests read and write temporary config files.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
if [ $# -eq 0 ]; then
    set -- -p wsedge-proto -p wsedge-command
fi
cargo +nightly miri test --lib "$@"
