#!/usr/bin/env bash
# Installs the independent Prometheus text-format parser the metrics test uses (the
# `prometheus_client` Python package, pinned, in a virtualenv under target/prom-venv/) and
# prints the path of its interpreter. Idempotent: a finished install (its stamp file says
# the pinned version) is reused. Called by scripts/test.sh before the tests, and by the
# integration test `operations::metrics_escape_route_names_for_a_strict_parser` itself when
# the venv is missing.
#
#   scripts/prom-parser.sh          install if needed, print the interpreter's path
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/target/prom-venv
VERSION=0.26.0

if [ "$(cat "$VENV/installed" 2>/dev/null)" != "$VERSION" ] || [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    mkdir -p "$ROOT/target"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "prometheus-client==$VERSION" >&2
    # The stamp is written last: a venv without it is a half-finished install, redone.
    echo "$VERSION" > "$VENV/installed"
fi
echo "$VENV/bin/python"
