#!/usr/bin/env bash
# demo_migrate.sh: a real QEMU guest boots on qemu:///system, is live-migrated to a second
# libvirt daemon while it keeps printing, and is destroyed (run as root; see docs/live-migration.md).
#
# Everything lives under $DEMO_DIR (default /var/tmp/computeflow-demo-migrate): the config
# (computeflow.conf: the "documented config change" is its [libvirt] section), the SQLite
# database and the instance files. Extra arguments go to `computeflow live-migration`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/var/tmp/computeflow-demo-migrate}
GUEST_DIR=${GUEST_DIR:-/var/tmp/computeflow-guest}
if [ "$(id -u)" -ne 0 ]; then echo "demo_migrate.sh: run as root" >&2; exit 1; fi

scripts/setup.sh >/dev/null
scripts/libvirt/install.sh >/dev/null
scripts/libvirt/build_guest.sh "$GUEST_DIR" >/dev/null
# qemu:///system under a name that also means it inside the second daemon's namespace,
# so that the guest could be migrated back (see docs/live-migration.md)
SRC_URI=$(scripts/libvirt/start_daemon.sh | tail -1)
SECOND_URI=$(scripts/libvirt/start_second_daemon.sh | tail -1)

mkdir -p "$DEMO_DIR" && chmod 755 "$DEMO_DIR"
CONF=$DEMO_DIR/computeflow.conf
cat > "$CONF" <<EOC
[DEFAULT]
state_path = $DEMO_DIR/state
boot_timeout = 120
[libvirt]
instances_path = $DEMO_DIR/instances
guest_kernel = $GUEST_DIR/vmlinuz
guest_initrd = $GUEST_DIR/initrd.gz
guest_cmdline = console=ttyS0 quiet
EOC
cf() { .venv/bin/computeflow --config-file "$CONF" "$@"; }
cf hosts list --json | grep -q '"name": "src"' || \
    cf hosts add src --driver libvirt --uri "$SRC_URI" --vcpus 2 --ram-mb 4096 --disk-gb 20
cf hosts list --json | grep -q '"name": "dst"' || \
    cf hosts add dst --driver libvirt --uri "$SECOND_URI" --vcpus 2 --ram-mb 4096 --disk-gb 20

name="mig-$(date +%H%M%S)"
echo "== spawn $name on src (qemu:///system)"
cf spawn "$name" --flavor m1.tiny --image cirros --host src
uuid=$(cf instances show "$name" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
console() { tail -n "${2:-3}" "$DEMO_DIR/instances/$1/$uuid/console.log" 2>/dev/null || true; }
for _ in $(seq 1 100); do console src 50 | grep -q '^tick 3' && break; sleep 0.2; done
echo; echo "== its serial console on src"; console src 4

echo; echo "== live-migrate $name to dst ($SECOND_URI)"
cf live-migration "$name" --target-host dst "$@"
for _ in $(seq 1 50); do [ "$(console dst 50 | grep -c '^tick')" -ge 2 ] && break; sleep 0.2; done
echo; echo "== its serial console on dst: the same boot goes on counting"; console dst 3
op=$(cf ops list --limit 1 --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo; echo "== the migration's flow log"; cf ops show "$op"

echo; echo "== destroy $name"
cf destroy "$name"
echo; echo "== what each daemon still holds"; cf inventory
