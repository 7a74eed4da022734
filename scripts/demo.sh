#!/usr/bin/env bash
# The main job on the embedded default (SQLite file + fake hypervisor under
# ~/.local/state/computeflow, no server): spawn with live progress, the flow
# log, then destroy. Extra arguments go to every computeflow command
# (e.g. --config-file my.conf).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cf() { .venv/bin/computeflow "$@"; }
cf "$@" hosts list --json | grep -q '"name": "demo-host"' || \
    cf "$@" hosts add demo-host --vcpus 8 --ram-mb 16384 --disk-gb 200
name="demo-$(date +%H%M%S)"
echo "== spawn $name (every line is a step transition already committed to the database)"
cf "$@" spawn "$name" --flavor m1.small --image cirros
op=$(cf "$@" ops list --limit 1 --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo; echo "== its flow log, read back from the database"
cf "$@" ops show "$op"
echo; echo "== destroy $name"
cf "$@" destroy "$name"
echo; echo "== what the fake hypervisor still holds"
cf "$@" inventory
