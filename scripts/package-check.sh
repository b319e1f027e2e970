#!/usr/bin/env bash
# Checks the Debian package and the service files.
#
#   scripts/package-check.sh --smoke   what CI runs (scripts/test.sh), ~1 min: builds the .deb
#                                      from the debug binaries, checks its contents with
#                                      dpkg-deb -c / -I, verifies both systemd units with
#                                      systemd-analyze in a root made of the unpacked .deb,
#                                      runs scripts/tune-host.sh, and checks the alert rules
#                                      with promtool (check + unit tests)
#   scripts/package-check.sh           by hand, several minutes and ~400 MB: the same, then a
#                                      release .deb installed with dpkg into a fresh Debian 12
#                                      root made by debootstrap, where `wsedge --check` runs
#                                      from the package and the units are verified again
#   --root DIR                         (by hand) reuse this debootstrap root instead of making
#                                      target/package-check/root anew
#   --profile P                        (by hand) the cargo profile of the packaged binaries:
#                                      release (default) or dev (no release build needed)
#   --keep                             keep the work directory
#
# Needs root for the chroot (by hand). Installs what is missing with apt-get (debootstrap,
# systemd for systemd-analyze, prometheus for promtool) and says so.
set -euo pipefail

SMOKE=0
KEEP=0
REUSE_ROOT=
PROFILE_ARG=
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --keep) KEEP=1 ;;
        --root) REUSE_ROOT=${2:?--root needs a directory}; shift ;;
        --profile) PROFILE_ARG=${2:?--profile needs a name}; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "package-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
log() { printf '[package-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n!!!!!!!!!!\n!!! package-check FAILED: %s\n!!!!!!!!!!\n\n' "$*" >&2; exit 1; }

need() { # COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "$1 not found: installing Debian package $2"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "$1 is missing and cannot be installed here (needs root and apt-get)"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; } \
        || die "apt-get install $2 failed"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsedge-package.XXXXXX")
MOUNTED=()
cleanup() {
    local rc=$?
    for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || true; done
    if [ "$rc" = 0 ] && [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else log "work directory kept: $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT

# --- the package ----------------------------------------------------------------------------
PROFILE=${PROFILE_ARG:-release}
[ "$SMOKE" = 1 ] && PROFILE=dev
log "building the .deb (profile $PROFILE)"
DEB=$(scripts/package.sh --profile "$PROFILE" 2>"$WORK/package.log" | tail -n1) \
    || { cat "$WORK/package.log" >&2; die "scripts/package.sh failed"; }
[ -f "$DEB" ] || die "no .deb at $DEB"
log "package: $DEB ($(du -h "$DEB" | cut -f1))"

dpkg-deb -c "$DEB" >"$WORK/listing"
awk '{print $6}' "$WORK/listing" | sed 's#^\./#/#' >"$WORK/contents"
for path in /usr/bin/wsedge /usr/bin/wsedgectl /lib/systemd/system/wsedge.service \
            /lib/systemd/system/wsedgectl.service /etc/wsedge/wsedge.toml \
            /usr/share/man/man1/wsedge.1.gz /usr/share/man/man1/wsedgectl.1.gz \
            /usr/share/doc/wsedge/operations.md /usr/share/doc/wsedge/configuration.md \
            /usr/share/doc/wsedge/monitoring/wsedge-dashboard.json \
            /usr/share/doc/wsedge/monitoring/wsedge-alerts.yml /usr/share/wsedge/tune-host.sh; do
    grep -qx "$path" "$WORK/contents" || die "the package lacks $path (dpkg-deb -c)"
done
grep -q '^-rwxr-xr-x .* \./usr/bin/wsedge$' "$WORK/listing" || die "/usr/bin/wsedge is not 0755"
mkdir -p "$WORK/control"
dpkg-deb -e "$DEB" "$WORK/control"
grep -qx /etc/wsedge/wsedge.toml "$WORK/control/conffiles" || die "/etc/wsedge/wsedge.toml is not a conffile"
[ -x "$WORK/control/postinst" ] || die "no postinst (it creates the wsedge user)"
grep -q '^Depends:.*passwd' "$WORK/control/control" || die "Depends lacks passwd (useradd)"
log "contents, conffiles, maintainer scripts: ok ($(wc -l <"$WORK/contents") entries)"

# --- the units --------------------------------------------------------------------------------
# systemd-analyze verify checks a unit against a root: the unpacked package (so ExecStart
# points at the packaged binaries) plus this machine's systemd units (the targets they name).
# It exits 0 even for lines it ignores ("Failed to parse ..."), so any output is a failure.
need systemd-analyze systemd
verify_units() { # ROOT
    local root=$1 out
    out=$(systemd-analyze --root="$root" --man=no verify \
        "$root/lib/systemd/system/wsedge.service" "$root/lib/systemd/system/wsedgectl.service" 2>&1) \
        || die "systemd-analyze verify failed: $out"
    [ -z "$out" ] || die "systemd-analyze verify complained: $out"
}
mkdir -p "$WORK/unpacked/usr/lib/systemd"
dpkg-deb -x "$DEB" "$WORK/unpacked"
cp -r /usr/lib/systemd/system "$WORK/unpacked/usr/lib/systemd/"

verify_units "$WORK/unpacked"
log "systemd-analyze verify (unpacked package, $(systemd-analyze --version | head -n1)): ok"
"$WORK/unpacked/usr/bin/wsedge" --config "$WORK/unpacked/etc/wsedge/wsedge.toml" --check >&2 \
    || die "the packaged example configuration is invalid"

# --- tune-host.sh, promtool ---------------------------------------------------------------------
scripts/tune-host.sh >"$WORK/tune.out" || die "scripts/tune-host.sh failed"
grep -q '^net.ipv4.tcp_migrate_req' "$WORK/tune.out" || die "tune-host.sh does not list tcp_migrate_req"
log "tune-host.sh: $(grep -c '(change)' "$WORK/tune.out" || true) settings to change on this machine"
need promtool prometheus
(cd docs/monitoring && promtool check rules wsedge-alerts.yml >&2 && promtool test rules wsedge-alerts.test.yml >&2) \
    || die "promtool rejected docs/monitoring/wsedge-alerts.yml or its tests"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"], "no panels"' \
    docs/monitoring/wsedge-dashboard.json || die "the Grafana dashboard is not valid JSON"
log "promtool check rules + test rules, dashboard JSON: ok"

if [ "$SMOKE" = 1 ]; then
    log "smoke passed in $(( $(date +%s) - START )) s"
    exit 0
fi

# --- a fresh Debian 12 ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "the Debian 12 check needs root (chroot)"
need debootstrap debootstrap
if [ -n "$REUSE_ROOT" ]; then
    DROOT=$REUSE_ROOT
    [ -x "$DROOT/bin/sh" ] || die "$DROOT is not a Debian root"
else
    DROOT=$ROOT/target/package-check/root
    rm -rf "$DROOT"
    mkdir -p "$DROOT"
    log "debootstrap bookworm (minbase + systemd) into $DROOT"
    debootstrap --variant=minbase --include=systemd bookworm "$DROOT" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
fi
grep -q '^VERSION_ID="12"' "$DROOT/etc/os-release" || die "$DROOT is not Debian 12"
mount -t proc proc "$DROOT/proc" && MOUNTED+=("$DROOT/proc")
cp "$DEB" "$DROOT/tmp/wsedge.deb"
in_root() { chroot "$DROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
in_root dpkg --purge wsedge >/dev/null 2>&1 || true
in_root dpkg -i /tmp/wsedge.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; die "dpkg -i failed in the Debian 12 root"; }
log "dpkg -i: $(grep -c . "$WORK/dpkg.log") lines, ok"
in_root getent passwd wsedge >/dev/null || die "postinst did not create the wsedge user"
in_root wsedge --config /etc/wsedge/wsedge.toml --check || die "wsedge --check failed in the Debian 12 root"
in_root wsedgectl --version >/dev/null || die "wsedgectl does not run in the Debian 12 root"
in_root systemd-analyze --version | head -n1 >&2
out=$(in_root systemd-analyze --man=no verify /lib/systemd/system/wsedge.service /lib/systemd/system/wsedgectl.service 2>&1) \
    || die "systemd-analyze verify failed in the Debian 12 root: $out"
[ -z "$out" ] || die "systemd-analyze verify complained in the Debian 12 root: $out"
in_root dpkg -r wsedge >/dev/null || die "dpkg -r failed"
[ ! -e "$DROOT/usr/bin/wsedge" ] || die "dpkg -r left /usr/bin/wsedge"
[ -e "$DROOT/etc/wsedge/wsedge.toml" ] || die "dpkg -r removed the conffile"
in_root dpkg --purge wsedge >/dev/null || die "dpkg --purge failed"
[ ! -e "$DROOT/etc/wsedge/wsedge.toml" ] || die "dpkg --purge left the conffile"
log "Debian 12 root: installed, wsedge --check ok, units verified, removed and purged"
log "passed in $(( $(date +%s) - START )) s"
