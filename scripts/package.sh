#!/usr/bin/env bash
# Builds the Debian package: both binaries, their man pages (generated from --help), then
# `cargo deb -p wsedge --no-build` (metadata in dataplane/runtime/Cargo.toml).
#
#   scripts/package.sh [--profile release|dev]     default: release
#
# Prints the path of the .deb (under target/debian/) on its last line. Needs cargo-deb
# (`cargo install cargo-deb --locked`; installed here when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE=${2:?}; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
DIR=$PROFILE
[ "$PROFILE" = dev ] && DIR=debug

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: installing cargo-deb" >&2
    cargo install cargo-deb --locked --version 3.8.0 >&2
fi
cargo build --profile "$PROFILE" -p wsedge -p wsedgectl >&2

# Man pages from --help: NAME, SYNOPSIS, and every command's help verbatim.
mkdir -p target/man
manpage() { # NAME SUMMARY HELP-COMMAND...
    local name=$1 summary=$2
    shift 2
    {
        printf '.TH %s 1 "%s" "wsedge %s" "User Commands"\n' "${name^^}" "$(date -u +%Y-%m-%d)" \
            "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
        printf '.SH NAME\n%s \\- %s\n.SH DESCRIPTION\n' "$name" "$summary"
        printf 'Generated from \\fB%s --help\\fR. The operator documentation is in /usr/share/doc/wsedge/.\n' "$name"
        for cmd in "$@"; do
            printf '.SS %s\n.nf\n' "$cmd"
            # shellcheck disable=SC2086
            target/$DIR/$cmd 2>&1 | sed -e 's/\\/\\\\/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\&'/"
            printf '.fi\n'
        done
    } | gzip -9n >"target/man/$name.1.gz"
}
manpage wsedge "WebSocket reverse proxy for Linux edge hosts (io_uring dataplane)" "wsedge --help"
ctl_cmds=("wsedgectl --help")
for sub in daemon status stats connections kill origins routes limits apply config reload \
           publish presence lists drain fleet "fleet status" "fleet show" "fleet apply"; do
    ctl_cmds+=("wsedgectl $sub --help")
done
manpage wsedgectl "control process and CLI of wsedge" "${ctl_cmds[@]}"

cargo deb -p wsedge --no-build --profile "$PROFILE" -o target/debian/ >&2
DEB=$(ls -t target/debian/wsedge_*.deb | head -n1)
echo "$ROOT/$DEB"
