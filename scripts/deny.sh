#!/usr/bin/env bash
# Dependency policy (deny.toml) with cargo-deny: licences, banned/duplicate versions and
# sources are checked from the lock file alone; RustSec advisories need the advisory database,
# a git repository on GitHub. When it cannot be fetched (CI and the development machines reach
# no GitHub), this says so loudly and does not pretend the advisories were checked.
# docs/reliability.md, "Dependency policy". `.ci/run` installs cargo-deny.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "deny: cargo-deny is not installed: cargo install --locked cargo-deny@0.20.2" >&2
    exit 1
fi

cargo deny --offline --locked check licenses bans sources

if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
    cargo deny --offline --locked check advisories
else
    cat <<'EOF'
deny: ************************************************************************************
deny: WARNING: RustSec advisories were NOT checked: the advisory database
deny: (github.com/RustSec/advisory-db) could not be fetched from this machine.
deny: Licences, duplicate versions and sources were checked. Check advisories where GitHub
deny: is reachable: cargo deny fetch db && cargo deny check advisories
deny: ************************************************************************************
EOF
fi
