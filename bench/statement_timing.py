"""Where a durable flow's time goes, per kind of statement.

Runs the 8-trivial-step reference flow on our backend (PostgreSQL) and times
every statement inside `cursor.execute`, grouped by pool (the shared engine,
the synchronous autocommit pool, the lazy one) and statement kind.

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
    for engine, label in ((db.engine, "shared"), (backend.autocommit, "sync"),
                          (backend.autocommit_lazy, "lazy")):
        _timed(engine, label, acc)
    start = time.perf_counter()
    for _ in range(args.n):
        one(0)
    total = (time.perf_counter() - start) / args.n * 1000
    print(f"8 trivial steps on PostgreSQL: {total:.1f} ms per flow; inside cursor.execute:")
    for key, (count, secs) in sorted(acc.items(), key=lambda kv: -kv[1][1]):
        print(f"  {key:<40} {count / args.n:5.1f} per flow  {secs / count * 1000:6.3f} ms each  "
              f"{secs / args.n * 1000:6.2f} ms per flow")
    backend.close()
    db.dispose()


if __name__ == "__main__":
    main()
