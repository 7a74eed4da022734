"""Throughput with 1, 4 and 16 operations in flight at once, on one database.

Each level runs its spawns from that many threads through one conductor (one
engine pool, one shared step executor) across 4 hosts, and reports flows/s,
the scaling against one at a time, and every error a user would have seen
(there must be none: no deadlock or serialization failure may leak).

Usage: .venv/bin/python bench/concurrency_bench.py [--db URL] [-n 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from concurrent import futures

import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import schema
from persistence.session import Database

DEFAULT_PG = "postgresql+psycopg2://root@127.0.0.1:5432/test"


def fresh(url: str) -> str:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS cf_conc_bench")
        c.exec_driver_sql("CREATE DATABASE cf_conc_bench")
    admin.dispose()
    db_url = sa.make_url(url).set(database="cf_conc_bench").render_as_string(hide_password=False)
    schema.upgrade(Database(db_url))
    return db_url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=DEFAULT_PG)
    ap.add_argument("-n", type=int, default=64, help="spawns per level")
    args = ap.parse_args()
    url = fresh(args.db)
    conf = config.load(
        [],
        overrides={
            ("DEFAULT", "state_path"): tempfile.mkdtemp(prefix="cf-conc-"),
            ("database", "connection"): url,
            ("conductor", "workers"): 32,
            ("database", "pool_size"): 20,
        },
    )
    c = Conductor(conf)
    hosts = [f"h{i}" for i in range(4)]
    for h in hosts:
        c.add_host(h, vcpus=100_000, ram_mb=1 << 30, disk_gb=1 << 30)
    base = None
    print(f"{'in flight':>9} {'flows/s':>8} {'ms/flow':>8} {'scaling':>8} {'errors':>7}")
    for level in (1, 4, 16):
        errors: list[str] = []

        def one(i: int, level: int = level, errors: list[str] = errors) -> None:
            name = f"c{level}-{i}-{uuid.uuid4().hex[:4]}"
            try:
                op = c.submit_spawn(SpawnRequest(name, "m1.tiny", "cirros", host=hosts[i % 4]))
                state = c.run(op).state
                if state != "SUCCEEDED":
                    errors.append(f"{name}: {state}")
            except Exception as err:  # anything here is an error a user would see
                errors.append(f"{name}: {type(err).__name__}: {err}")

        with futures.ThreadPoolExecutor(level) as pool:
            list(pool.map(one, range(4)))  # warm-up
            start = time.perf_counter()
            list(pool.map(one, range(args.n)))
            elapsed = time.perf_counter() - start
        rate = args.n / elapsed
        base = base or rate
        print(f"{level:>9} {rate:8.1f} {elapsed / args.n * 1000:8.1f} {rate / base:8.2f} {len(errors):>7}")
        for e in errors[:5]:
            print("   ", e)
    c.close()


if __name__ == "__main__":
    main()
