"""Idle latency: submit -> first step and submit -> done, one operation at a time.

    .venv/bin/python bench/wakeup_bench.py [--rounds 30] [--jobboard redis|zookeeper|etcd]

Rows, side by side in one run on PostgreSQL (COMPUTEFLOW_TEST_PG):
* in-process runner: the embedded mode, `wait()` runs the spawn in the submitter;
* conductor service, wake-ups on: a `computeflow conductor` process on the
  jobboard (COMPUTEFLOW_TEST_REDIS, ...), the submitter's `wait()` notified;
* conductor service, polling: the same with `[conductor] wakeups = false`
  (poll_interval 0.5, the behaviour before wake-ups).
"first step" is the first step's RUNNING row in the flow log (its own
timestamp) minus the time just before `submit`; "done" is when `wait()`
returned. Each round submits one m1.tiny spawn on an idle system.

`idle_latencies(db_url, board_url, rounds, wakeups)` is importable by other
benches (bench/fleet_bench.py). A private database and board namespace are
created and removed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conductor import config  # noqa: E402
from conductor.api import Conductor, SpawnRequest  # noqa: E402
from persistence import operations  # noqa: E402
from persistence.models import FLOW_STEP, FlowLogEntry  # noqa: E402
from persistence.session import Database  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from scaleout_bench import TABLES, board_url, scratch_database  # noqa: E402


def _conf(tmp: Path, name: str, db_url: str, extra: str) -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f"[DEFAULT]\nstate_path = {tmp / 'state'}\n[database]\nconnection = {db_url}\n"
        f"[conductor]\nlog_file = {tmp / name}.log\n{extra}"
    )
    return path


def _reset(db_url: str, tmp: Path) -> None:
    db = Database(db_url)
    with db.engine.begin() as c:
        for t in TABLES:
            c.exec_driver_sql(f"DELETE FROM {t}")
    db.dispose()
    for f in (tmp / "state" / "fake").glob("*.json"):
        f.unlink()


def _first_step(c: Conductor, op_id: str) -> dt.datetime:
    with c.db.session() as s:
        return s.scalar(
            sa.select(sa.func.min(FlowLogEntry.at)).where(
                FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step != FLOW_STEP
            )
        )


def _rounds(c: Conductor, rounds: int) -> tuple[list[float], list[float]]:
    """(submit -> first step, submit -> done) in ms for `rounds` spawns, one at a time."""
    first, done = [], []
    _ = c.wakeups  # opened before the clock starts, as in a long-lived client
    for i in range(rounds + 1):
        t0_wall, t0 = dt.datetime.now(dt.UTC).replace(tzinfo=None), time.perf_counter()
        h = c.submit_spawn(SpawnRequest(name=f"vm{uuid.uuid4().hex[:8]}", flavor="m1.tiny", image="cirros"))
        st = h.wait(timeout=60)
        elapsed = time.perf_counter() - t0
        if st.state != operations.SUCCEEDED:
            raise SystemExit(f"spawn {h} ended {st.state}: {st.error}")
        if i == 0:
            continue  # warm-up: imports, connections, first listing
        first.append((_first_step(c, h) - t0_wall).total_seconds() * 1000)
        done.append(elapsed * 1000)
        time.sleep(0.05)  # idle between rounds, as a lone operator's submissions
    return first, done


def idle_latencies(
    db_url: str, board: str | None, rounds: int, *, wakeups: bool = True, tmp: Path | None = None
) -> dict[str, list[float]]:
    """Latencies (ms) of `rounds` spawns: with `board`, through a conductor
    process on it; without, in-process (the embedded runner)."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix="cf-wakeup-"))
    _reset(db_url, tmp)
    extra = f"wakeups = {str(wakeups).lower()}\n" + (f"jobboard = {board}\n" if board else "")
    c = Conductor(config.load([str(_conf(tmp, "client", db_url, extra))]))
    proc = None
    try:
        c.add_host("h1", vcpus=100000, ram_mb=100000 * 1024, disk_gb=10**6)
        if board:
            with open(tmp / "conductor.err", "w") as err:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "conductor.cli",
                        "--config-file",
                        str(_conf(tmp, "conductor", db_url, extra)),
                        "conductor",
                    ],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        first, done = _rounds(c, rounds)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        c.close()
    return {"first": first, "done": done}


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--jobboard", choices=("redis", "zookeeper", "etcd"), default="redis")
    args = ap.parse_args()
    with scratch_database("cf_wakeup", args.jobboard) as (tag, db_url):
        board = board_url(args.jobboard, tag)
        rows = [
            ("in-process runner (PostgreSQL)", idle_latencies(db_url, None, args.rounds)),
            (f"conductor service, wake-ups on ({args.jobboard})", idle_latencies(db_url, board, args.rounds)),
            (
                f"conductor service, polling ({args.jobboard}, 0.5 s)",
                idle_latencies(db_url, board, args.rounds, wakeups=False),
            ),
        ]
    base = statistics.median(rows[0][1]["done"])
    print(f"== idle latency, {args.rounds} spawns each, ms (p50 / p90 / max); done - in-process: p50 difference")
    print(f"{'path':48} {'submit -> first step':>24} {'submit -> done':>24} {'done - in-process':>18}")
    for name, r in rows:
        cells = [f"{statistics.median(v):6.1f} /{_p(v, 90):6.1f} /{max(v):6.1f}" for v in (r["first"], r["done"])]
        print(f"{name:48} {cells[0]:>24} {cells[1]:>24} {statistics.median(r['done']) - base:17.1f}")


if __name__ == "__main__":
    main()
