"""Scale-out throughput and takeover time: conductor processes on PostgreSQL + a jobboard.

    .venv/bin/python bench/scaleout_bench.py [--ops 1000] [--conductors 1,2,3]
                                             [--max-operations 4] [--claim-expiry 5] [--takeovers 3]
                                             [--jobboard redis|zookeeper|etcd]

For each conductor count, N spawns (m1.tiny, fake driver) are submitted to
the jobboard, then that many `computeflow conductor` processes drain it; the
throughput is N / (last finish - first start) from the operations' own
timestamps, printed side by side as ratios to one conductor. Then the
takeover time: a conductor hangs in `power_on` and is SIGKILLed while a second
one idles; the time until the second one's first write (epoch 2) is measured
against the claim expiry.

Uses a private database on the PostgreSQL server (COMPUTEFLOW_TEST_PG) and a
private namespace on the jobboard server (COMPUTEFLOW_TEST_REDIS, _ZOOKEEPER,
_ETCD); both are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conductor import config  # noqa: E402
from conductor.api import Conductor, SpawnRequest  # noqa: E402
from persistence import operations, schema  # noqa: E402
from persistence.models import FlowLogEntry, Instance, Operation  # noqa: E402
from persistence.session import Database  # noqa: E402

PG = os.environ.get("COMPUTEFLOW_TEST_PG", "postgresql+psycopg2://root@127.0.0.1:5432/test")
REDIS = os.environ.get("COMPUTEFLOW_TEST_REDIS", "redis://127.0.0.1:6379")
ZOOKEEPER = os.environ.get("COMPUTEFLOW_TEST_ZOOKEEPER", "127.0.0.1:2181")
ETCD = os.environ.get("COMPUTEFLOW_TEST_ETCD", "127.0.0.1:2379")


def board_url(kind: str, namespace: str) -> str:
    return {
        "redis": f"{REDIS}?namespace={namespace}",
        "zookeeper": f"zookeeper://{ZOOKEEPER}?path=/{namespace}",
        "etcd": f"etcd://{ETCD}?path=/{namespace}",
    }[kind]


@contextlib.contextmanager
def scratch_database(prefix: str, jobboard: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a fresh, upgraded PostgreSQL database for one bench run;
    dropped afterwards with the jobboard's keys of the same name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    db_url = sa.make_url(PG).set(database=name).render_as_string(hide_password=False)
    try:
        db = Database(db_url)
        schema.upgrade(db)
        db.dispose()
        yield name, db_url
    finally:
        forget_board(jobboard, name)
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def forget_board(kind: str, namespace: str) -> None:
    """Delete what the run left on the jobboard server."""
    if kind == "redis":
        rds = redis.Redis.from_url(REDIS)
        for key in rds.scan_iter(f"{namespace}:*"):
            rds.delete(key)
        rds.close()
    elif kind == "zookeeper":
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=ZOOKEEPER)
        zk.start(timeout=5)
        zk.delete(f"/{namespace}", recursive=True) if zk.exists(f"/{namespace}") else None
        zk.stop()
        zk.close()
    else:
        import etcd3gw

        host, port = ETCD.split(":")
        etcd3gw.client(host=host, port=int(port)).delete_prefix(f"/{namespace}")


TABLES = (
    "flow_log",
    "secrets",
    "claims",
    "operations",
    "instance_events",
    "instances",
    "hosts",
    "atomdetails",
    "flowdetails",
    "logbooks",
)


class Bench:
    def __init__(self, args, tmp: Path, db_url: str, namespace: str) -> None:
        self.args, self.tmp, self.db_url = args, tmp, db_url
        self.board_url = board_url(args.jobboard, namespace)
        self.procs: list[subprocess.Popen] = []

    def conf(self, name: str, extra: str = "") -> Path:
        path = self.tmp / f"{name}.conf"
        path.write_text(
            f"[DEFAULT]\nstate_path = {self.tmp / 'state'}\n[database]\nconnection = {self.db_url}\n"
            f"[conductor]\njobboard = {self.board_url}\nclaim_expiry = {self.args.claim_expiry}\n"
            f"max_operations = {self.args.max_operations}\npoll_interval = 0.05\n"
            f"log_file = {self.tmp / name}.log\n{extra}"
        )
        return path

    def start(self, name: str, extra: str = "") -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "conductor.cli", "--config-file", str(self.conf(name, extra)), "conductor"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def reset(self) -> Conductor:
        db = Database(self.db_url)
        with db.engine.begin() as c:
            for t in TABLES:
                c.exec_driver_sql(f"DELETE FROM {t}")
        db.dispose()
        for f in (self.tmp / "state" / "fake").glob("*.json"):
            f.unlink()
        c = Conductor(config.load([str(self.conf("client"))]))
        c.add_host("h1", vcpus=100000, ram_mb=100000 * 1024, disk_gb=10**6)
        return c


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def throughput(b: Bench, k: int) -> tuple[float, float, int]:
    c = b.reset()
    try:
        n = b.args.ops
        for i in range(n):
            c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros"))
        for i in range(k):
            b.start(f"k{k}-c{i}")

        def finished():
            with c.db.session() as s:
                return (
                    s.scalar(
                        sa.select(sa.func.count())
                        .select_from(Operation)
                        .where(Operation.state.in_(operations.FINAL_STATES))
                    )
                    == n
                )

        wait_for(finished, 3600, f"{n} operations on {k} conductors")
        with c.db.session() as s:
            t0, t1, ok = s.execute(
                sa.select(
                    sa.func.min(Operation.started_at),
                    sa.func.max(Operation.finished_at),
                    sa.func.count().filter(Operation.state == operations.SUCCEEDED),
                )
            ).one()
        b.stop_all()
        secs = (t1 - t0).total_seconds()
        return n / secs, secs, ok
    finally:
        c.close()


def chaos(b: Bench, n: int) -> dict:
    """n spawns on 3 conductors, one SIGKILLed and restarted after every n/30
    completions: count what was lost, completed twice or left held."""
    import random

    c = b.reset()
    try:
        ids = [c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(n)]
        names = ["x0", "x1", "x2"]
        live = {name: b.start(name) for name in names}
        rng, kills, last, step = random.Random(1), 0, 0, max(3, n // 30)

        def done() -> int:
            with c.db.session() as s:
                return s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Operation)
                    .where(Operation.state.in_(operations.FINAL_STATES))
                )

        deadline = time.monotonic() + 3600
        while (finished := done()) < n and time.monotonic() < deadline:
            if finished - last < step:
                time.sleep(0.2)
                continue
            last, name = finished, rng.choice(names)
            live[name].kill()
            live[name].wait()
            b.procs.remove(live[name])
            live[name] = b.start(name)
            kills += 1
        with c.db.session() as s:
            succeeded = s.scalar(
                sa.select(sa.func.count()).select_from(Operation).where(Operation.state == operations.SUCCEEDED)
            )
            twice = s.execute(
                sa.select(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step)
                .where(FlowLogEntry.state == "SUCCESS")
                .group_by(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step)
                .having(sa.func.count() > 1)
            ).all()
            held = s.scalar(sa.select(sa.func.count()).select_from(Instance).where(Instance.held_by.isnot(None)))
            not_active = s.scalar(sa.select(sa.func.count()).select_from(Instance).where(Instance.vm_state != "active"))
        guests = len(c.rt.driver_for("h1").inventory().guests)
        b.stop_all()
        return {
            "operations": n,
            "kills": kills,
            "lost": n - done(),
            "succeeded": succeeded,
            "completed twice": len({t[0] for t in twice}),
            "holds left": held,
            "instances not active": not_active,
            "guests": guests,
            "ids": len(ids),
        }
    finally:
        c.close()


def takeover(b: Bench) -> float:
    c = b.reset()
    try:
        b.start("hang", "[fake]\nfaults = power_on:execute:hang\n")
        op_id = c.submit_spawn(SpawnRequest(name="vm-t", flavor="m1.tiny", image="cirros"))

        def reached():
            with c.db.session() as s:
                return s.scalar(
                    sa.select(sa.func.count())
                    .select_from(FlowLogEntry)
                    .where(FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step == "power_on")
                )

        wait_for(reached, 120, "power_on to start")
        b.start("standby")
        time.sleep(2)  # let the standby finish starting: we time the takeover, not a process start
        b.procs[0].kill()
        killed = time.monotonic()

        def taken():
            with c.db.session() as s:
                return s.scalar(
                    sa.select(sa.func.count())
                    .select_from(FlowLogEntry)
                    .where(FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.epoch == 2)
                )

        wait_for(taken, 120, "the takeover")
        elapsed = time.monotonic() - killed
        assert op_id.wait(timeout=120).state == operations.SUCCEEDED
        b.stop_all()
        return elapsed
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--conductors", default="1,2,3")
    ap.add_argument("--max-operations", type=int, default=4)
    ap.add_argument("--claim-expiry", type=int, default=5)
    ap.add_argument("--takeovers", type=int, default=3)
    ap.add_argument("--chaos-ops", type=int, default=1000, help="0: skip the kill/restart run")
    ap.add_argument("--jobboard", choices=("redis", "zookeeper", "etcd"), default="redis")
    args = ap.parse_args()
    with scratch_database("cf_bench", args.jobboard) as (name, db_url):
        with tempfile.TemporaryDirectory(prefix="cf-scaleout-") as tmp:
            b = Bench(args, Path(tmp), db_url, name)
            try:
                rows = []
                for k in (int(x) for x in args.conductors.split(",")):
                    rate, secs, ok = throughput(b, k)
                    rows.append((k, rate, secs, ok))
                    print(f"  {k} conductor(s): {args.ops} spawns in {secs:.1f} s ({ok} succeeded)", flush=True)
                times = [takeover(b) for _ in range(args.takeovers)]
                mayhem = chaos(b, args.chaos_ops) if args.chaos_ops else None
            finally:
                b.stop_all()
        base = rows[0][1]
        print(
            f"\nthroughput, {args.ops} spawns, max_operations={args.max_operations}, "
            f"PostgreSQL + {args.jobboard}, fake driver"
        )
        print(f"{'conductors':>10} {'ops/s':>8} {'seconds':>8} {'ratio':>6}")
        for k, rate, secs, _ in rows:
            print(f"{k:>10} {rate:>8.1f} {secs:>8.1f} {rate / base:>6.2f}")
        print(
            f"\ntakeover after SIGKILL (claim_expiry={args.claim_expiry} s): "
            + ", ".join(f"{t:.1f}" for t in times)
            + f" s; max {max(times):.1f} s = "
            f"{max(times) / args.claim_expiry:.2f} x claim_expiry (target < 2)"
        )
        if mayhem:
            mayhem.pop("ids")
            print("\n3 conductors killed and restarted at random: " + ", ".join(f"{k} {v}" for k, v in mayhem.items()))


if __name__ == "__main__":
    main()
