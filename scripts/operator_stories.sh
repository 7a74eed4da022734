#!/usr/bin/env bash
# The four failure stories of docs/operator-guide.md, run for real on the
# embedded default in a fresh state directory (fake hypervisor, faults armed
# with `[fake] faults`): a step fails; a revert fails and is repaired; the
# process is killed mid-operation and resumed; a hung step is terminated from
# another shell. Each ends with `computeflow inventory`. Its output is what
# the guide shows; run it to check the guide is still true.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/computeflow ] || scripts/setup.sh >/dev/null
dir=$(mktemp -d /tmp/computeflow-stories.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
conf="$dir/computeflow.conf"
faults() { printf '[DEFAULT]\nstate_path = %s/state\n[fake]\nfaults = %s\n' "$dir" "$1" > "$conf"; }
cf() { echo "\$ computeflow $*"; .venv/bin/computeflow --config-file "$conf" "$@"; echo "(exit $?)"; }
last_op() { .venv/bin/computeflow --config-file "$conf" ops list --limit 1 --json |
            .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }

faults ""
cf hosts add h1 --vcpus 8 --ram-mb 16384 --disk-gb 200

echo; echo "## 1. A step fails: the operation reverts by itself"
faults "wait_running:execute:fail"
cf spawn web1 --flavor m1.small --image cirros
cf inventory

echo; echo "## 2. A revert fails: the operation needs repair"
faults "wait_running:execute:fail,define_guest:revert:fail"
cf spawn web2 --flavor m1.small --image cirros
op=$(last_op)
cf reboot web2
cf ops list --needs-repair
faults ""   # the cause is fixed
cf ops retry-revert "$op"
cf inventory

echo; echo "## 3. Killed mid-operation, then resumed"
faults "power_on:execute:kill"
cf spawn web3 --flavor m1.small --image cirros
op=$(last_op)
faults ""
cf ops show "$op"
cf resume --dry-run
cf resume
cf destroy web3
cf inventory

echo; echo "## 4. A step hangs: cancel cannot stop it, terminate does"
faults "power_on:execute:hang"
echo "\$ computeflow spawn web4 --flavor m1.small --image cirros &   # another shell"
.venv/bin/computeflow --config-file "$conf" spawn web4 --flavor m1.small --image cirros \
    > "$dir/hung.out" 2>&1 &
hung=$!
until grep -q "power_on .*RUNNING" "$dir/hung.out"; do sleep 0.2; done
op=$(last_op)
faults ""
cf ops show "$op"
cf cancel "$op" --wait 3
cf terminate "$op"
wait $hung; rc=$?
echo "# the first shell, once its lease renewal finds the operation taken (exit $rc):"
tail -n 1 "$dir/hung.out"
cf inventory
echo "# failed spawns leave their instance record in error (no host, nothing held): destroy ends it"
cf instances list
for name in web1 web2 web4; do cf destroy "$name" | tail -n 2; done
cf instances list
cf inventory
