"""Where a durable flow's time goes, per kind of statement.

Runs the 8-trivial-step reference flow on our backend (PostgreSQL) and times
every round trip: statements on the shared engine inside `cursor.execute`,
by kind, and the backend's write batches (`persistence/pg_batch.py`: pool
checkout, rendering and the round trip), by the statements in them and by
pool (the synchronous autocommit pool or the lazy one).

Usage: .venv/bin/python bench/statement_timing.py [-n 60] [--pg URL]
"""

from __future__ import annotations

import argparse
import collections
import time

from sqlalchemy import event

from persistence.session import Database
from persistence.taskflow_backend import Backend
from spawn_bench import DEFAULT_PG, fresh_database, trivial_runner


def _timed(engine, label: str, acc: dict) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def before(conn, cursor, statement, params, context, executemany):
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, params, context, executemany):
        key = f"{label:<7} {' '.join(statement.split()[:2])}"
        acc[key][0] += 1
        acc[key][1] += time.perf_counter() - conn.info["t0"]


def _timed_batches(backend: Backend, acc: dict) -> None:
    batches = backend.batches
    send = batches.send

    def timed_send(pool, ops, fence=None):
        label = "lazy" if pool is backend.autocommit_lazy else "sync"
        kinds = collections.Counter(name for name, _ in ops)
        key = f"{label:<7} batch " + "+".join(f"{n}x{k}" for k, n in kinds.items())
        t0 = time.perf_counter()
        try:
            return send(pool, ops, fence)
        finally:
            acc[key][0] += 1
            acc[key][1] += time.perf_counter() - t0

    batches.send = timed_send


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--pg", default=DEFAULT_PG)
    args = ap.parse_args()
    db = Database(fresh_database(args.pg, "cf_bench_stmt"))
    backend = Backend(db.engine)
    one = trivial_runner(backend)
    for _ in range(5):
        one(0)
    acc: dict = collections.defaultdict(lambda: [0, 0.0])
    _timed(db.engine, "shared", acc)
    _timed_batches(backend, acc)
    start = time.perf_counter()
    for _ in range(args.n):
        one(0)
    total = (time.perf_counter() - start) / args.n * 1000
    print(f"8 trivial steps on PostgreSQL: {total:.1f} ms per flow; per round trip:")
    for key, (count, secs) in sorted(acc.items(), key=lambda kv: -kv[1][1]):
        print(
            f"  {key:<70} {count / args.n:5.1f} per flow  {secs / count * 1000:6.3f} ms each  "
            f"{secs / args.n * 1000:6.2f} ms per flow"
        )
    backend.close()
    db.dispose()


if __name__ == "__main__":
    main()
