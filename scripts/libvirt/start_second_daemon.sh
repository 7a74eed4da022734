#!/usr/bin/env bash
# start_second_daemon.sh [STATE_DIR]: a second, independent libvirtd on this machine, the
# destination of live-migration tests and the demo (run as root, after start_daemon.sh).
#
# It runs in a private mount and UTS namespace (hostname cf-second) with libvirt's state
# directories bind-mounted from STATE_DIR (default /var/tmp/computeflow-libvirt2), its own
# socket and a host_uuid of its own (libvirt refuses to migrate between daemons with the same
# one), QEMU as root with no security driver (both daemons must reach the same instance
# files) and serial/log files written directly (no virtlogd). Clients reach it at
#     qemu+unix:///system?socket=STATE_DIR/sock/libvirt-sock
# which is printed on the last line.
#
# Migrating back: inside its namespace /run/libvirt is its own, so `qemu:///system` there is
# itself. Before that mount it binds the system daemon's /run/libvirt onto SHARED_SOCK_DIR
# (default /var/tmp/computeflow-libvirt1/sock, where start_daemon.sh binds it outside), so
#     qemu+unix:///system?socket=SHARED_SOCK_DIR/libvirt-sock
# names the system daemon in both namespaces and either daemon can be a migration's source.
# Idempotent: a running second daemon is only checked; one started by an older version of
# this script (no SHARED_SOCK_DIR in its namespace) is restarted: its guests keep running and
# the new daemon takes them over.
# Stop it with: kill $(cat STATE_DIR/libvirtd.pid)
set -euo pipefail
D=${1:-/var/tmp/computeflow-libvirt2}
TIMEOUT=${TIMEOUT:-30}
PORT_MIN=${PORT_MIN:-49400}
SHARED_SOCK_DIR=${SHARED_SOCK_DIR:-/var/tmp/computeflow-libvirt1/sock}
URI="qemu+unix:///system?socket=$D/sock/libvirt-sock"

if [ "$(id -u)" -ne 0 ]; then echo "start_second_daemon.sh: run as root" >&2; exit 1; fi
for bin in libvirtd virsh unshare nsenter mountpoint; do
    command -v "$bin" >/dev/null || { echo "start_second_daemon.sh: $bin missing (run install.sh)" >&2; exit 1; }
done

alive() { [ -n "$1" ] && [ "$(cat /proc/$1/comm 2>/dev/null)" = libvirtd ]; }

pid=$(cat "$D/libvirtd.pid" 2>/dev/null || true)
if alive "$pid" && ! nsenter --target "$pid" --mount mountpoint -q "$SHARED_SOCK_DIR"; then
    echo "start_second_daemon.sh: restarting pid $pid: its namespace has no $SHARED_SOCK_DIR"
    kill -TERM "$pid"
    deadline=$(( $(date +%s) + TIMEOUT ))
    while alive "$pid"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "start_second_daemon.sh: pid $pid still running ${TIMEOUT}s after SIGTERM" >&2
            exit 1
        fi
        sleep 0.2
    done
fi
if alive "$pid"; then
    echo "start_second_daemon.sh: already running (pid $pid)"
else
    mkdir -p "$D"/{etc,run,lib,cache,log,sock}
    cp -a /etc/libvirt/. "$D/etc/"
    [ -f "$D/host_uuid" ] || cat /proc/sys/kernel/random/uuid > "$D/host_uuid"
    cat > "$D/etc/libvirtd.conf" <<EOC
unix_sock_dir = "$D/sock"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "$(cat "$D/host_uuid")"
log_outputs = "3:file:$D/libvirtd.log"
EOC
    cat > "$D/etc/qemu.conf" <<EOC
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
namespaces = [ ]
migration_port_min = $PORT_MIN
migration_port_max = $((PORT_MIN + 15))
EOC
    for x in lib/qemu/{save,snapshot,dump,ram,nvram,checkpoint,channel/target} lib/{images,boot,dnsmasq,network} cache/qemu log/qemu; do
        mkdir -p "$D/$x"
    done
    rm -f "$D/sock/libvirt-sock"
    unshare --mount --uts --propagation unchanged bash -c "
      mount --make-rprivate / 2>/dev/null || true
      hostname cf-second
      mkdir -p '$SHARED_SOCK_DIR'
      mountpoint -q '$SHARED_SOCK_DIR' || mount --bind /run/libvirt '$SHARED_SOCK_DIR'
      mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
      mount --bind '$D/etc' /etc/libvirt
      mount --bind '$D/run' /run/libvirt
      mount --bind '$D/lib' /var/lib/libvirt
      mount --bind '$D/cache' /var/cache/libvirt
      mount --bind '$D/log' /var/log/libvirt
      exec libvirtd -d -p '$D/libvirtd.pid'
    "
    echo "start_second_daemon.sh: started libvirtd (state in $D)"
fi

deadline=$(( $(date +%s) + TIMEOUT ))
until virsh -c "$URI" version >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "start_second_daemon.sh: $URI not answering after ${TIMEOUT}s (see $D/libvirtd.log)" >&2
        exit 1
    fi
    sleep 0.2
done
echo "$URI"
