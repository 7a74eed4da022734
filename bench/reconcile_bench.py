"""`computeflow reconcile` over 1,000 instances on the fake driver.

Seeds the database and the fake hosts directly (N instances that agree on both
sides, spread over H hosts), plants known drift (1% each: orphan guests, power
drift, missing guests), checks the audit finds exactly that (kinds, subjects
and actions), then times, side by side (interleaved rounds, median), the audit
against its floor: the same database reads plus one host_report per host, with
no comparison. Target: audit < 5 s for 1,000 instances. Also times the CLI end
to end (`reconcile --json`, process start included), and checks its output.

Usage: .venv/bin/python bench/reconcile_bench.py [--instances 1000] [--hosts 4] [--repeat 5]
                                                 [--postgresql URL]
(--postgresql postgresql+psycopg2://root@127.0.0.1:5432/test: the same on a
fresh `cf_reconcile_bench` database there instead of the SQLite file.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from conductor import config, reconcile, reconcile_report
from conductor.api import Conductor
from drivers.base import DiskKind
from persistence import claims, hosts, instances, operations, schema
from persistence.models import Claim, Host, Instance, Operation
from persistence.session import Database

REPO = Path(__file__).resolve().parent.parent
FLAVOR = {"vcpus": 1, "ram_mb": 512, "disk_gb": 2}  # m1.small's claim in this bench
PG_DB = "cf_reconcile_bench"


def seed(c: Conductor, n: int, host_names: list[str]) -> dict[str, list[str]]:
    """n instances that agree everywhere; returns uuids per host."""
    per_host: dict[str, list[str]] = {h: [] for h in host_names}
    rows, claim_rows = [], []
    for i in range(n):
        h = host_names[i % len(host_names)]
        u = str(uuid.uuid4())
        per_host[h].append(u)
        vif = {
            "id": str(uuid.uuid4()),
            "mac": f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "network": "default",
        }
        rows.append(
            dict(
                uuid=u,
                name=f"vm{i}",
                live_marker="",
                host=h,
                flavor="m1.small",
                image="cirros",
                vm_state="active",
                power_state="running",
                task_state=None,
                held_by=None,
                vifs=[vif],
                user_metadata={},
                system_metadata={},
                volumes=[],
            )
        )
        claim_rows.append(
            dict(
                operation_id=str(uuid.uuid4()),
                host=h,
                instance_uuid=u,
                vcpus=FLAVOR["vcpus"],
                ram_mb=FLAVOR["ram_mb"],
                disk_gb=FLAVOR["disk_gb"],
            )
        )
    with c.db.session() as s:
        s.execute(sa.insert(Instance), rows)
        s.execute(sa.insert(Claim), claim_rows)
        for h, uuids in per_host.items():
            k = len(uuids)
            s.execute(
                sa.update(Host)
                .where(Host.name == h)
                .values(
                    used_vcpus=k * FLAVOR["vcpus"], used_ram_mb=k * FLAVOR["ram_mb"], used_disk_gb=k * FLAVOR["disk_gb"]
                )
            )
    for h in host_names:  # each host's state file written once, as spawn's steps leave it
        drv = c.rt.driver_for(h)
        base = f"{drv._base_dir}/cirros"
        with drv.state.change() as st:
            st["base_images"]["cirros"] = {"path": base, "size_mb": 16}
            for row in (r for r in rows if r["host"] == h):
                u, vif = row["uuid"], row["vifs"][0]
                path = drv._disk_path(u, DiskKind.ROOT)
                st["disks"][path] = {
                    "instance": u,
                    "kind": "root",
                    "size_mb": 1024,
                    "backing": base,
                    "preallocated": False,
                    "fs_format": None,
                    "image": "cirros",
                }
                st["ports"][vif["id"]] = {"instance": u, "mac": vif["mac"], "network": "default"}
                st["guests"][u] = {
                    "name": row["name"],
                    "power_state": "running",
                    "vcpus": 1,
                    "memory_mb": 512,
                    "disks": [path],
                    "vifs": [vif["id"]],
                    "admin_password_sha256": None,
                }
    return per_host


def plant(c: Conductor, per_host: dict[str, list[str]], n: int) -> set[tuple]:
    """1% each of orphan guests, power drift and missing guests, on the first
    host; returns the findings expected, as (kind, host, subject, action)."""
    k = max(1, n // 100)
    h = next(iter(per_host))
    drv = c.rt.driver_for(h)
    victims = per_host[h]
    assert len(victims) >= 2 * k, "too few instances per host for the planted drift"
    expected = set()
    with drv.state.change() as st:
        for _ in range(k):  # orphan guests of no instance
            u = str(uuid.uuid4())
            st["guests"][u] = {
                "name": "ghost",
                "power_state": "running",
                "vcpus": 1,
                "memory_mb": 512,
                "disks": [],
                "vifs": [],
            }
            expected.add(("orphan-guest", h, u, "remove_from_host"))
        for u in victims[:k]:  # stopped behind computeflow's back
            st["guests"][u]["power_state"] = "shutdown"
            expected.add(("power-drift", h, u, "record_power_state"))
        for u in victims[k : 2 * k]:  # undefined by hand (its disk and port stay)
            del st["guests"][u]
            expected.add(("guest-missing", h, u, "mark_guest_missing"))
    return expected


def check(result: reconcile_report.Audit, expected: set[tuple], n: int, host_names: list[str]) -> None:
    got = {(f.what, f.host, f.subject, f.action and f.action["action"]) for f in result.findings}
    assert len(result.findings) == len(expected) and got == expected, (
        f"unexpected: {sorted(got - expected)[:5]}, missed: {sorted(expected - got)[:5]}"
    )
    assert result.instances == n and result.hosts == sorted(host_names) and not result.skipped_hosts, (
        result.instances,
        result.hosts,
        result.skipped_hosts,
    )


def floor(c: Conductor, host_names: list[str]) -> None:
    """What the audit cannot avoid: its database reads (the same queries as
    reconcile_findings.read_db, with their ORM loading) and one report per host."""
    with c.db.session() as s:
        live = instances.list_live(s)
        s.execute(sa.select(Instance.uuid, Instance.name, Instance.vm_state)).all()
        operations.resumable(s)
        all_claims = claims.all_claims(s)
        wanted = {i.held_by for i in live if i.held_by} | {cl.operation_id for cl in all_claims}
        if wanted:
            s.execute(sa.select(Operation.id, Operation.state).where(Operation.id.in_(wanted))).all()
        hosts.list_hosts(s)
    for h in host_names:
        c.rt.driver_for(h).host_report()


def side_by_side(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each, in interleaved rounds (same machine state)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def postgresql_url(url: str) -> str:
    """A fresh database PG_DB on that server, at our schema's head."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_DB}")
        conn.exec_driver_sql(f"CREATE DATABASE {PG_DB}")
    admin.dispose()
    db_url = sa.make_url(url).set(database=PG_DB).render_as_string(hide_password=False)
    db = Database(db_url)
    schema.upgrade(db)
    db.dispose()
    return db_url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--postgresql", metavar="URL", help="run on a fresh database on this PostgreSQL server instead of SQLite"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cf-reconcile-bench-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    conf = tmp / "computeflow.conf"
    db_url = postgresql_url(args.postgresql) if args.postgresql else f"sqlite:///{tmp}/computeflow.sqlite"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp}/state\n[database]\nconnection = {db_url}\n")
    host_names = [f"h{i + 1}" for i in range(args.hosts)]
    with Conductor(config.load([str(conf)])) as c:
        for h in host_names:
            c.add_host(h, vcpus=100_000, ram_mb=100_000_000, disk_gb=1_000_000)
        t0 = time.perf_counter()
        per_host = seed(c, args.instances, host_names)
        seed_s = time.perf_counter() - t0
        expected = plant(c, per_host, args.instances)
        check(reconcile.audit(c), expected, args.instances, host_names)  # also the warm-up
        floor(c, host_names)
        med = side_by_side({"audit": lambda: reconcile.audit(c), "floor": lambda: floor(c, host_names)}, args.repeat)
        check(reconcile.audit(c), expected, args.instances, host_names)  # nothing changed it
    t0 = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), "reconcile", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    cli_s = time.perf_counter() - t0
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    found = out["findings"]  # the dry run's, as printed
    assert {(f["what"], f["host"], f["subject"], f["action"] and f["action"]["action"]) for f in found} == expected, (
        "the CLI's findings differ from the audit's"
    )
    kinds = {k: sum(1 for e in expected if e[0] == k) for k in sorted({e[0] for e in expected})}
    audit_s, floor_s = med["audit"], med["floor"]
    where = "PostgreSQL" if args.postgresql else "SQLite"
    print(
        f"reconcile of {args.instances} instances on {args.hosts} fake hosts ({where}; seeded "
        f"in {seed_s:.2f} s), median of {args.repeat}; findings exactly as planted: {kinds}"
    )
    print(f"{'row':<44} {'seconds':>8} {'ratio':>6}")
    print(f"{'audit (reconcile dry run, in process)':<44} {audit_s:8.3f} {audit_s / floor_s:6.2f}")
    print(f"{'floor: its DB reads + host_report per host':<44} {floor_s:8.3f} {1.0:6.2f}")
    print(f"{'CLI: computeflow reconcile --json (1 run)':<44} {cli_s:8.3f} {cli_s / floor_s:6.2f}")
    print(f"budget 5 s: {'met' if audit_s < 5 else 'MISSED'} ({audit_s / 5:.0%} of it)")


if __name__ == "__main__":
    main()
