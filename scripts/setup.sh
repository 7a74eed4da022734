#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root, or with sudo available):
# system packages libvirt-python builds against, then a virtualenv with computeflow in it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need_apt=()
for pkg in libvirt-dev pkg-config gcc python3-dev python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "setup: installing ${need_apt[*]}" >&2
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -e "$stamp" ]; then
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e '.[test]'
    touch "$stamp"
fi
# Byte-compile our own modules: with PYTHONDONTWRITEBYTECODE set (as on some
# CI machines) nothing caches them, and every `computeflow` process (the tests
# start thousands) compiled ~130 modules again: ~0.2 s each. Stale files are
# harmless: Python checks each against its source.
"$VENV/bin/python" -m compileall -q -j 0 computeflow conductor drivers flows persistence web tests bench >/dev/null
