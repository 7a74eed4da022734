#!/usr/bin/env bash
# start_daemon.sh: make qemu:///system answer, on a machine without systemd (run as root).
#
# Starts virtlogd (QEMU's log and serial-file handler) and libvirtd as daemons with
# Debian's stock configuration, unless they already run, then waits (up to
# TIMEOUT seconds, default 30) until `virsh -c qemu:///system version` works.
# Idempotent: with both daemons up it only checks the connection.
set -euo pipefail
TIMEOUT=${TIMEOUT:-30}
URI=qemu:///system

if [ "$(id -u)" -ne 0 ]; then
    echo "start_daemon.sh: run as root" >&2
    exit 1
fi
for bin in virtlogd libvirtd virsh; do
    command -v "$bin" >/dev/null || { echo "start_daemon.sh: $bin missing (run install.sh)" >&2; exit 1; }
done

# A daemon runs when its pid file names a live process of that name.
running() {
    local pid
    pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

for daemon in virtlogd libvirtd; do
    if running "$daemon"; then
        echo "start_daemon.sh: $daemon already running (pid $(cat /run/$daemon.pid))"
    else
        "$daemon" -d
        echo "start_daemon.sh: started $daemon"
    fi
done

deadline=$(( $(date +%s) + TIMEOUT ))
until virsh -c "$URI" version >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "start_daemon.sh: $URI not answering after ${TIMEOUT}s" >&2
        virsh -c "$URI" version >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "start_daemon.sh: $URI answers ($(virsh -c "$URI" version 2>/dev/null | awk '/Running hypervisor/ {print $3, $4}'))"
