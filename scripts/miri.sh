#!/usr/bin/env bash
# Runs the unit tests of the pure crates (wsedge-proto, wsedge-command) under Miri, the Rust
# interpreter that detects undefined behaviour (out-of-bounds or misaligned access, use after
# free, invalid values, data races) in the code they run: ours and their dependencies'
# (httparse's SIMD paths, regex, serde_json, base64, sha1).
#
#   scripts/miri.sh              both crates' unit tests (but the few listed in SLOW below);
#                                wsedge-proto takes well over 10 minutes under Miri
#   scripts/miri.sh --quick      wsedge-command's control-socket wire code (framing,
#                                messages, views: the bytes an untrusted peer sends) and
#                                durations: what CI runs (about 2 minutes with the build;
#                                all of wsedge-command's tests take over 7 minutes, most
#                                of it TOML parsing in the config tests)
#   scripts/miri.sh -p wsedge-proto frame::    arguments go to `cargo miri test --lib`
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
if [ "${1:-}" = "--quick" ]; then
    exec cargo +nightly miri test --lib -p wsedge-command -- wire:: duration::
fi
if [ $# -gt 0 ]; then
    exec cargo +nightly miri test --lib "$@"
fi

# Tests that repeat the same code thousands of times (model and differential walks) take
# tens of minutes under Miri, which runs code about a thousand times slower; smaller tests
# run the same paths. Run one by name to include it.
SLOW=(
    channels::tests::hub_model_check
    handshake::tests::scan_head_matches_simple_version
    wheel::tests::huge_jump_fires_everything_in_order
    wheel::tests::fire_order_follows_deadlines
    wheel::tests::differential_against_btreemap
    firewall::netlist::tests::differential_against_linear_scan
    firewall::tests::bucket_map_stays_bounded
    endpoint::tests::autobahn_like_groups_1_to_7_at_every_split
    frame::mask::tests::differential_every_alignment_length_offset
)
skips=()
for t in "${SLOW[@]}"; do
    skips+=(--skip "$t")
done
cargo +nightly miri test --lib -p wsedge-command
cargo +nightly miri test --lib -p wsedge-proto -- --exact "${skips[@]}"
