"""What per-host limits cost a spawn that never waits, measured side by side.

The same in-process spawns (fake driver, no latency) with
`max_concurrent_builds = 0` (no slot bookkeeping) and `= 1000` (a slot asked
for, taken with ownership and released, but never waited for), alternating
in rounds so that machine noise hits both alike. Prints per-spawn times and
their ratio for each database.

Usage: .venv/bin/python bench/host_limits_bench.py [-n 30] [--rounds 3] [--pg URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import schema
from persistence.session import Database

DEFAULT_PG = "postgresql+psycopg2://root@127.0.0.1:5432/test"
TABLES = (
    "flow_log",
    "secrets",
    "claims",
    "host_slots",
    "operations",
    "instance_events",
    "instances",
    "hosts",
    "atomdetails",
    "flowdetails",
    "logbooks",
)


def _clean(url: str) -> None:
    db = Database(url)
    schema.upgrade(db)
    with db.engine.begin() as c:
        for t in TABLES:
            c.exec_driver_sql(f"DELETE FROM {t}")
    db.dispose()


def _per_spawn(url: str, tmp: Path, builds: int, n: int) -> float:
    _clean(url)
    conf = tmp / f"b{builds}.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {tmp}/state\n[database]\nconnection = {url}\n"
        f"[conductor]\nmax_concurrent_builds = {builds}\nlog_file = {tmp}/log\n"
    )
    with Conductor(config.load([str(conf)])) as c:
        c.add_host("h1", vcpus=4096, ram_mb=4096 * 1024, disk_gb=100000)
        t0 = time.perf_counter()
        for i in range(n):
            h = c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros"))
            assert h.wait().state == "SUCCEEDED"
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="spawns per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", default=DEFAULT_PG)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        urls = {"sqlite": f"sqlite:///{tmp}/bench.sqlite"}
        try:
            sa.create_engine(args.pg).connect().close()
            urls["postgresql"] = args.pg
        except sa.exc.OperationalError as e:
            print(f"postgresql skipped: {e.orig}")
        print(f"{'database':<12} {'no limit ms':>12} {'limit ms':>10} {'ratio':>7}")
        for name, url in urls.items():
            off, on = [], []
            for _ in range(args.rounds):
                off.append(_per_spawn(url, tmp, 0, args.n))
                on.append(_per_spawn(url, tmp, 1000, args.n))
            a, b = statistics.median(off), statistics.median(on)
            print(f"{name:<12} {a * 1000:12.1f} {b * 1000:10.1f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
