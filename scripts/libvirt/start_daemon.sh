#!/usr/bin/env bash
# start_daemon.sh: make qemu:///system answer, on a machine without systemd (run as root).
#
# Starts virtlogd (QEMU's log and serial-file handler) and libvirtd as daemons with
# Debian's stock configuration, unless they already run, then waits (up to
# TIMEOUT seconds, default 30) until `virsh -c qemu:///system version` works.
#
# It also bind-mounts /run/libvirt onto SHARED_SOCK_DIR (default
# /var/tmp/computeflow-libvirt1/sock): the second daemon (start_second_daemon.sh) has a
# /run/libvirt of its own, so `qemu:///system` there means itself; this path means the
# system daemon in both mount namespaces, and the live-migration tier and demo reach the
# system daemon as
#     qemu+unix:///system?socket=SHARED_SOCK_DIR/libvirt-sock
# (printed on the last line). A directory bind: a restarted libvirtd's new socket shows.
# Idempotent: with both daemons up and the bind in place it only checks the connections.
set -euo pipefail
TIMEOUT=${TIMEOUT:-30}
URI=qemu:///system
SHARED_SOCK_DIR=${SHARED_SOCK_DIR:-/var/tmp/computeflow-libvirt1/sock}
SHARED_URI="qemu+unix:///system?socket=$SHARED_SOCK_DIR/libvirt-sock"

if [ "$(id -u)" -ne 0 ]; then
    echo "start_daemon.sh: run as root" >&2
    exit 1
fi
for bin in virtlogd libvirtd virsh mountpoint; do
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

mkdir -p "$SHARED_SOCK_DIR"
if mountpoint -q "$SHARED_SOCK_DIR"; then
    echo "start_daemon.sh: /run/libvirt already bound at $SHARED_SOCK_DIR"
else
    mount --bind /run/libvirt "$SHARED_SOCK_DIR"
    echo "start_daemon.sh: bound /run/libvirt at $SHARED_SOCK_DIR"
fi
if ! virsh -c "$SHARED_URI" version >/dev/null 2>&1; then
    echo "start_daemon.sh: $SHARED_URI not answering" >&2
    exit 1
fi
echo "$SHARED_URI"
