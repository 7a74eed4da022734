"""`computeflow reconcile` over 1,000 instances on the fake driver.

Seeds the database and the fake hosts directly (N instances that agree on both
sides, spread over H hosts), plants known drift (1% each: orphan guests, power
drift, missing guests), checks the audit finds exactly that, then times, side
by side, the audit against its floor: the same database reads plus one
host_report per host, with no comparison. Target: audit < 5 s for 1,000
instances. Also times the CLI end to end (`reconcile --json`, process start
included).

Usage: .venv/bin/python bench/reconcile_bench.py [--instances 1000] [--hosts 4] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from conductor import config, reconcile
from conductor.api import Conductor
from drivers.base import DiskKind
from persistence import claims, hosts, instances, operations
from persistence.models import Claim, Host, Instance

REPO = Path(__file__).resolve().parent.parent
FLAVOR = {"vcpus": 1, "ram_mb": 512, "disk_gb": 2}


def seed(c: Conductor, n: int, host_names: list[str]) -> dict[str, list[str]]:
    """n instances that agree everywhere; returns uuids per host."""
    per_host: dict[str, list[str]] = {h: [] for h in host_names}
    rows, claim_rows = [], []
    for i in range(n):
        h = host_names[i % len(host_names)]
        u = str(uuid.uuid4())
        per_host[h].append(u)
        vif = {"id": str(uuid.uuid4()), "mac": "fa:16:3e:00:00:01", "network": "default"}
        rows.append(dict(uuid=u, name=f"vm{i}", live_marker="", host=h, flavor="m1.small",
                         image="cirros", vm_state="active", power_state="running",
                         task_state=None, held_by=None, vifs=[vif], user_metadata={},
                         system_metadata={}, volumes=[]))
        claim_rows.append(dict(operation_id=str(uuid.uuid4()), host=h, instance_uuid=u,
                               vcpus=FLAVOR["vcpus"], ram_mb=FLAVOR["ram_mb"],
                               disk_gb=FLAVOR["disk_gb"]))
    with c.db.session() as s:
        s.execute(sa.insert(Instance), rows)
        s.execute(sa.insert(Claim), claim_rows)
        for h, uuids in per_host.items():
            k = len(uuids)
            s.execute(sa.update(Host).where(Host.name == h).values(
                used_vcpus=k * FLAVOR["vcpus"], used_ram_mb=k * FLAVOR["ram_mb"],
                used_disk_gb=k * FLAVOR["disk_gb"]))
    for h, uuids in per_host.items():
        drv = c.rt.driver_for(h)
        with drv.state.change() as st:
            for row in (r for r in rows if r["host"] == h):
                u, vif = row["uuid"], row["vifs"][0]
                path = drv._disk_path(u, DiskKind.ROOT)
                st["disks"][path] = {"instance": u, "kind": "root", "size_mb": 1024,
                                     "backing": None, "preallocated": False, "fs_format": None,
                                     "image": "cirros"}
                st["ports"][vif["id"]] = {"instance": u, "mac": vif["mac"], "network": "default"}
                st["guests"][u] = {"name": row["name"], "power_state": "running", "vcpus": 1,
                                   "memory_mb": 512, "disks": [path], "vifs": [vif["id"]]}
    return per_host


def plant(c: Conductor, per_host: dict[str, list[str]], n: int) -> dict[str, int]:
    k = max(1, n // 100)
    h = next(iter(per_host))
    drv = c.rt.driver_for(h)
    victims = per_host[h]
    with drv.state.change() as st:
        for _ in range(k):  # orphan guests of no instance
            st["guests"][str(uuid.uuid4())] = {"name": "ghost", "power_state": "running",
                                               "vcpus": 1, "memory_mb": 512, "disks": [],
                                               "vifs": []}
        for u in victims[:k]:  # stopped behind computeflow's back
            st["guests"][u]["power_state"] = "shutdown"
        for u in victims[k:2 * k]:  # undefined by hand
            del st["guests"][u]
    return {"orphan-guest": k, "power-drift": k, "guest-missing": k}


def floor(c: Conductor, host_names: list[str]) -> None:
    """What the audit cannot avoid: its database reads and one report per host."""
    with c.db.session() as s:
        instances.list_live(s)
        s.execute(sa.select(Instance.uuid, Instance.name, Instance.vm_state)).all()
        operations.resumable(s)
        claims.all_claims(s)
        hosts.list_hosts(s)
    for h in host_names:
        c.rt.driver_for(h).host_report()


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cf-reconcile-bench-"))
    conf = tmp / "computeflow.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp}/state\n"
                    f"[database]\nconnection = sqlite:///{tmp}/computeflow.sqlite\n")
    host_names = [f"h{i + 1}" for i in range(args.hosts)]
    with Conductor(config.load([str(conf)])) as c:
        for h in host_names:
            c.add_host(h, vcpus=100_000, ram_mb=100_000_000, disk_gb=1_000_000)
        per_host = seed(c, args.instances, host_names)
        planted = plant(c, per_host, args.instances)
        found: dict[str, int] = {}
        for f in reconcile.audit(c).findings:
            found[f.what] = found.get(f.what, 0) + 1
        assert found == planted, (found, planted)
        audit_s = median_s(lambda: reconcile.audit(c), args.repeat)
        floor_s = median_s(lambda: floor(c, host_names), args.repeat)
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "conductor.cli", "--config-file", str(conf),
                          "reconcile", "--json"], capture_output=True, text=True, cwd=REPO)
    cli_s = time.perf_counter() - t0
    assert cli.returncode == 0, cli.stderr
    print(f"reconcile of {args.instances} instances on {args.hosts} fake hosts (SQLite), "
          f"median of {args.repeat}; findings as planted: {planted}")
    print(f"{'row':<44} {'seconds':>8} {'ratio':>6}")
    print(f"{'audit (reconcile dry run, in process)':<44} {audit_s:8.3f} {audit_s / floor_s:6.2f}")
    print(f"{'floor: its DB reads + host_report per host':<44} {floor_s:8.3f} {1.0:6.2f}")
    print(f"{'CLI: computeflow reconcile --json (1 run)':<44} {cli_s:8.3f} {cli_s / floor_s:6.2f}")
    print(f"budget 5 s: {'met' if audit_s < 5 else 'MISSED'} ({audit_s / 5:.0%} of it)")


if __name__ == "__main__":
    main()
