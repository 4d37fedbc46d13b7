#!/usr/bin/env bash
# Set-up and entry points for a fresh Debian machine with Python 3.11:
#   ./dev.sh run    serve the registry with the embedded defaults (filesystem under ./data, 127.0.0.1:5000)
#   ./dev.sh test   run the whole test suite (installs the Debian packages in .ci/apt-packages.txt when missing)
#   ./dev.sh lint   ruff and mypy
#   ./dev.sh bench  the benchmark against Debian's docker-registry (bench/README.md; about 5 minutes)
# Each creates the virtualenv (.venv) and installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
APT_PACKAGES_FILE=.ci/apt-packages.txt

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else echo "dev.sh: need root to run: $*" >&2; return 1
    fi
}

apt_install() {
    echo "dev.sh: installing with apt-get: $*" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "dev.sh: $PYTHON not found; install Python 3.11 (apt-get install python3.11 python3.11-venv)" >&2
        exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
            apt_install python3.11-venv
        fi
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
        echo "$want" > "$stamp"
    fi
}

ensure_test_tools() {
    local missing=()
    while read -r package binary; do
        [ -z "$package" ] || [ "${package:0:1}" = "#" ] && continue
        command -v "${binary:-$package}" >/dev/null 2>&1 || missing+=("$package")
    done < "$APT_PACKAGES_FILE"
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

command=${1:-}
shift || true
case "$command" in
    run)
        ensure_venv
        exec "$VENV/bin/moorage" serve "$@"
        ;;
    test)
        ensure_venv
        ensure_test_tools
        # Byte-compile our own sources once: with PYTHONDONTWRITEBYTECODE set (as on CI machines), every Python
        # process the tests start - hundreds of servers and commands - compiled them again from source (py-spy over
        # the suite: ~80 CPU seconds of its server and command processes).
        "$VENV/bin/python" -m compileall -q registry storage_backends tests || true  # a syntax error: pytest says where
        # Three test processes (pytest-xdist) keep both cores busy while tests wait on real servers and clients
        # (measured on 2 cores: 532 s with three, 718 s with two); TEST_WORKERS=0 runs everything in this process (an
        # `-n` among the arguments wins too).
        exec "$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-3}" "$@"
        ;;
    bench)
        ensure_venv
        ensure_test_tools
        exec "$VENV/bin/python" bench/run.py "$@"
        ;;
    lint)
        ensure_venv
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/mypy"
        ;;
    *)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
