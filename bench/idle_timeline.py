"""Where an idle spawn's time goes before its first step: a statement timeline.

    .venv/bin/python bench/idle_timeline.py [--warmup 5] [--runs 5]

Runs spawns one at a time in-process on a scratch PostgreSQL database
(COMPUTEFLOW_TEST_PG), records every statement sent (psycopg2 cursors of
every engine here, the flow writes' batches included) with its start time
and how long the driver took, and prints, for
the run with the median submit -> first step, each statement's offset from
submit, its own time and the Python time before it. The first step is the
first step's RUNNING row in the flow log. What the in-process runner spends
here is what a conductor spends after its wake-up (bench/wakeup_bench.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conductor import config  # noqa: E402
from conductor.api import Conductor, SpawnRequest  # noqa: E402
from persistence.models import FLOW_STEP, FlowLogEntry  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from scaleout_bench import scratch_database  # noqa: E402


class _Recorder:
    """Statements of one run, as (wall start, driver seconds, text)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, str]] = []

    def cursor_class(self) -> type:
        rows = self.rows

        class TimedCursor(psycopg2.extensions.cursor):
            def execute(self, query, vars=None):  # noqa: A002 - psycopg2's own name
                start = time.time()
                try:
                    return super().execute(query, vars)
                finally:
                    rows.append((start, time.time() - start, query if isinstance(query, str) else query.decode()))

        return TimedCursor


def _one(c: Conductor) -> tuple[float, float]:
    """(wall time before submit, wall time of the first step's RUNNING row)."""
    t0 = time.time()
    h = c.submit_spawn(SpawnRequest(name=f"vm{uuid.uuid4().hex[:8]}", flavor="m1.tiny", image="cirros"))
    c.run(h)
    with c.db.session() as s:
        at = s.scalar(
            sa.select(sa.func.min(FlowLogEntry.at)).where(
                FlowLogEntry.flow_detail_uuid == str(h), FlowLogEntry.step != FLOW_STEP
            )
        )
    return t0, at.replace(tzinfo=dt.UTC).timestamp()


def _short(text: str) -> str:
    return " ".join(text.split())[:90]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rec = _Recorder()
    connect = psycopg2.connect
    psycopg2.connect = functools.partial(connect, cursor_factory=rec.cursor_class())  # every engine's
    with scratch_database("cf_timeline", "redis") as (_, db_url):
        tmp = Path(tempfile.mkdtemp(prefix="cf-timeline-"))
        conf = tmp / "c.conf"
        conf.write_text(f"[DEFAULT]\nstate_path = {tmp / 'state'}\n[database]\nconnection = {db_url}\n")
        c = Conductor(config.load([str(conf)]))
        try:
            c.add_host("h1", vcpus=100000, ram_mb=100000 * 1024, disk_gb=10**6)
            for _ in range(args.warmup):
                _one(c)
            runs = []
            for _ in range(args.runs):
                rec.rows.clear()
                t0, first = _one(c)
                runs.append((first - t0, t0, list(rec.rows), first))
                time.sleep(0.05)
        finally:
            c.close()
    runs.sort(key=lambda r: r[0])
    total, t0, rows, first = runs[len(runs) // 2]
    print(f"submit -> first step's log row, {args.runs} runs: " + ", ".join(f"{r[0] * 1000:.1f}" for r in runs))
    print(f"median run: {total * 1000:.1f} ms; statements up to the first step:")
    print(f"{'at ms':>7} {'python':>7} {'driver':>7}  statement")
    prev = t0
    n = 0
    for start, took, text in rows:
        if start > first:
            break
        n += 1
        print(f"{(start - t0) * 1000:7.2f} {(start - prev) * 1000:7.2f} {took * 1000:7.2f}  {_short(text)}")
        prev = start + took
    driver = sum(took for start, took, _ in rows if start <= first)
    print(f"{n} statements: driver {driver * 1000:.1f} ms, Python {(total - driver) * 1000:.1f} ms")
    print("median over runs:", f"{statistics.median(r[0] for r in runs) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
