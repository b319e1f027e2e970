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

. "$ROOT/scripts/lib/pinned-venv.sh"
[ -x "$VENV/bin/python" ] || rm -f "$VENV/installed"
pinned_venv "$VENV" "$VERSION" "prometheus-client==$VERSION"
echo "$VENV/bin/python"
