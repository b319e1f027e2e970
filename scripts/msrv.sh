#!/usr/bin/env bash
# Checks that the declared minimum Rust version (rust-version in Cargo.toml) is true, as far
# as this machine allows (docs/reliability.md, "Minimum Rust version"):
#   1. clippy.toml's msrv and fuzz/Cargo.toml's rust-version say the same;
#   2. no locked dependency declares a newer rust-version than ours;
#   3. if rustup has that exact toolchain, `cargo +VERSION check` builds every target with it;
#      otherwise it says loudly that language features were not checked by a compiler.
# std APIs newer than the MSRV are caught by clippy's incompatible_msrv lint, which reads
# rust-version and is denied by `cargo clippy -- -D warnings` in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "msrv: no rust-version in Cargo.toml" >&2; exit 1; }
clippy_msrv=$(sed -n 's/^msrv = "\(.*\)"/\1/p' clippy.toml)
fuzz_msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' fuzz/Cargo.toml)
if [ "$clippy_msrv" != "$msrv" ] || [ "$fuzz_msrv" != "$msrv" ]; then
    echo "msrv: Cargo.toml says $msrv, clippy.toml $clippy_msrv, fuzz/Cargo.toml $fuzz_msrv" >&2
    exit 1
fi

# Every dependency's own rust-version, from the lock file (no network).
newer=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
def v(s):
    parts = [int(x) for x in s.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
msrv = v(sys.argv[1])
for p in json.load(sys.stdin)["packages"]:
    rv = p.get("rust_version")
    if rv and v(rv) > msrv:
        print(p["name"], p["version"], "needs Rust", rv)
' "$msrv")
if [ -n "$newer" ]; then
    echo "msrv: dependencies need a newer Rust than $msrv:" >&2
    echo "$newer" >&2
    exit 1
fi
echo "msrv: rust-version $msrv; clippy.toml and fuzz/ agree; no dependency needs a newer Rust"

if rustup toolchain list 2>/dev/null | grep -q "^$msrv"; then
    echo "msrv: building every target with Rust $msrv"
    cargo "+$msrv" check --workspace --all-targets --locked
    (cd fuzz && cargo "+$msrv" check --no-default-features --all-targets --locked)
else
    echo "msrv: WARNING: the Rust $msrv toolchain is not installed here, so the language"
    echo "msrv: features (let-chains need 1.88) were NOT checked by a $msrv compiler; only std"
    echo "msrv: APIs (clippy incompatible_msrv) and dependencies' rust-version were checked."
    echo "msrv: Run 'rustup toolchain install $msrv' and this script again where a network allows."
fi
