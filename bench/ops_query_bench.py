"""`ops list` and `ops show` over 100,000 stored operations.

Seeds the rows itself (operations, and a 25-transition flow log for each of
them: 2.5 M log rows), then times the exact queries the CLI runs, through the
CLI's own functions, warm. Targets: list < 100 ms, show < 50 ms.

Usage: .venv/bin/python bench/ops_query_bench.py [--db sqlite|postgresql|mysql] [--ops 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import uuid

import sqlalchemy as sa

from persistence import flowlog, operations, schema
from persistence.models import FlowLogEntry, Operation
from persistence.session import Database

URLS = {
    "postgresql": "postgresql+psycopg2://root@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
STEPS = [
    "take_hold",
    "claim_resources",
    "ensure_base_image",
    "create_root_disk",
    "create_ephemeral_disk",
    "create_swap_disk",
    "plug_vif_0",
    "wait_vif_plugged",
    "define_guest",
    "power_on",
    "wait_running",
    "mark_active",
]


def database(kind: str) -> Database:
    if kind == "sqlite":
        return Database(f"sqlite:///{tempfile.mkdtemp()}/ops.sqlite")
    admin = sa.create_engine(URLS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS cf_ops_bench")
        c.exec_driver_sql("CREATE DATABASE cf_ops_bench")
    admin.dispose()
    return Database(sa.make_url(URLS[kind]).set(database="cf_ops_bench").render_as_string(False))


def seed(db: Database, n: int) -> list[str]:
    t0 = dt.datetime(2026, 1, 1)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    batch = 5000
    for start in range(0, n, batch):
        ops, logs = [], []
        for i in range(start, min(start + batch, n)):
            at = t0 + dt.timedelta(seconds=i)
            ops.append(
                dict(
                    id=ids[i],
                    kind="spawn",
                    instance_uuid=str(uuid.uuid4()),
                    parameters={},
                    state="SUCCEEDED",
                    flow_version=1,
                    flow_detail_uuid=ids[i],
                    created_at=at,
                    started_at=at,
                    finished_at=at,
                )
            )
            logs.append(
                dict(flow_detail_uuid=ids[i], atom_uuid=ids[i], step="(flow)", state="RUNNING", attempt=0, at=at)
            )
            for s in STEPS:
                for state in ("RUNNING", "SUCCESS"):
                    logs.append(dict(flow_detail_uuid=ids[i], atom_uuid=s, step=s, state=state, attempt=1, at=at))
        with db.engine.begin() as c:
            c.execute(sa.insert(Operation.__table__), ops)
            c.execute(sa.insert(FlowLogEntry.__table__), logs)
    return ids


def timed_ms(fn, repeat: int = 30) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="postgresql", choices=["sqlite", "postgresql", "mysql"])
    ap.add_argument("--ops", type=int, default=100_000)
    args = ap.parse_args()
    db = database(args.db)
    schema.upgrade(db)
    t = time.perf_counter()
    ids = seed(db, args.ops)
    print(
        f"{args.db}: seeded {args.ops} operations and {args.ops * 25} flow-log rows in {time.perf_counter() - t:.0f}s"
    )

    def ops_list():
        with db.session() as s:
            assert len(operations.listing(s, limit=50)) == 50

    def ops_list_failed():
        with db.session() as s:
            operations.listing(s, limit=50, state="FAILED")

    probe = ids[len(ids) // 2]

    def ops_show():
        with db.session() as s:
            op = operations.get(s, probe)
            steps = flowlog.summarize(flowlog.entries(s, op.id))
            assert len(steps) == len(STEPS)

    def ops_show_prefix():
        with db.session() as s:
            assert operations.get(s, probe[:8]) is not None

    for name, fn, target in (
        ("ops list (newest 50)", ops_list, 100),
        ("ops list --state FAILED", ops_list_failed, 100),
        ("ops show ID", ops_show, 50),
        ("ops show PREFIX (8 chars)", ops_show_prefix, 50),
    ):
        ms = timed_ms(fn)
        print(f"  {name:<28} median {ms:7.2f} ms   target < {target} ms   {'ok' if ms < target else 'SLOW'}")


if __name__ == "__main__":
    main()
