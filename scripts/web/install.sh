#!/usr/bin/env bash
# The browser tier of tests/web/: Debian's headless Chromium and its driver
# (/usr/bin/chromium, /usr/bin/chromedriver). Tools that download their own
# browser do not work here; selenium is pointed at these two binaries.
set -euo pipefail
need=()
for pkg in chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "web/install: installing ${need[*]}" >&2
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
