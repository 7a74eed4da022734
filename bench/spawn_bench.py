"""What durability costs, measured side by side in one run.

Rows, and why each exists:

* ``spawn, in-memory``: computeflow's real spawn flow (same steps, same fake
  driver, same database work inside the steps) on taskflow's in-memory
  persistence. The ceiling: what the engine and the steps cost with no durable
  flow state.
* ``spawn, computeflow <db>``: the same flow, durable, through our backend.
* ``8 trivial steps, ...``: the issue's reference flow (8 no-op tasks in a
  line) on taskflow in memory, on taskflow's stock SQLAlchemy backend and on
  ours, so figures compare with the ones measured before any of this existed.
* ``commit floor``: single-row INSERT + COMMIT on the same database, the price
  of one durable write; "commits' worth" says how many of those a flow costs.

Usage: .venv/bin/python bench/spawn_bench.py [-n 40] [--pg URL] [--mysql URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import event
from taskflow import engines, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models as tf_models
from taskflow.persistence.backends import impl_memory, impl_sqlalchemy

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import schema
from persistence.session import Database
from persistence.taskflow_backend import Backend

DEFAULT_PG = "postgresql+psycopg2://root@127.0.0.1:5432/test"
DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"


@dataclass
class Row:
    path: str
    ms: float
    statements: float | None = None
    commits: float | None = None


class Counter:
    """Statements and commits issued on an engine, plus the batches our
    backend sends on PostgreSQL straight to psycopg2 (each one round trip and
    one commit, whatever the number of statements in it)."""

    def __init__(self, engine: sa.Engine, backend: object = None) -> None:
        self.batches = getattr(backend, "batches", None)
        self.statements = self.commits = 0
        self._batches_at_reset = self._sent()
        event.listen(engine, "before_cursor_execute", self._stmt)
        event.listen(engine, "commit", self._commit)

    def _sent(self) -> int:
        return self.batches.round_trips if self.batches is not None else 0

    def _stmt(self, conn, *a) -> None:
        self.statements += 1
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            self.commits += 1  # each autocommitted statement is its own commit

    def _commit(self, *a) -> None:
        self.commits += 1

    def totals(self) -> tuple[int, int]:
        """(round trips, commits) since the last reset."""
        sent = self._sent() - self._batches_at_reset
        return self.statements + sent, self.commits + sent

    def reset(self) -> None:
        self.statements = self.commits = 0
        self._batches_at_reset = self._sent()


def timed(n: int, fn: Callable[[int], None], warmup: int = 3) -> float:
    for i in range(warmup):
        fn(-1 - i)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1000


def fresh_database(url: str, name: str) -> str:
    """An empty database on the server, at our schema's head."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    db_url = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    db = Database(db_url)
    schema.upgrade(db)
    db.dispose()
    return db_url


class _InMemory(impl_memory.MemoryBackend):
    """taskflow's in-memory persistence with the runner's hooks as no-ops."""

    def fence(self, flow_uuid: str, epoch: int) -> None:
        pass

    def unfence(self, flow_uuid: str) -> None:
        pass

    def log_interrupted_atoms(self, flow_detail) -> None:
        pass


def conductor_for(url: str, in_memory: bool = False) -> tuple[Conductor, str]:
    conf = config.load(
        [], overrides={("DEFAULT", "state_path"): tempfile.mkdtemp(prefix="cf-bench-"), ("database", "connection"): url}
    )
    c = Conductor(conf)
    host = f"bench-{uuid.uuid4().hex[:6]}"
    c.add_host(host, vcpus=1 << 20, ram_mb=1 << 30, disk_gb=1 << 30)
    if in_memory:
        c.runner.backend = _InMemory({})
    return c, host


def bench_spawn(label: str, url: str, n: int, in_memory: bool = False) -> Row:
    c, host = conductor_for(url, in_memory)
    counter = Counter(c.db.engine, c.runner.backend)

    def one(i: int) -> None:
        op = c.submit_spawn(SpawnRequest(f"{host}-{i}", "m1.small", "cirros", host=host))
        if c.run(op).state != "SUCCEEDED":
            raise SystemExit(f"{label}: spawn {op} did not succeed")

    for i in range(3):
        one(-1 - i)
    counter.reset()
    ms = timed(n, one, warmup=0)
    statements, commits = counter.totals()
    row = Row(label, ms, statements / n, commits / n)
    c.close()
    return row


class Noop(task.Task):
    def execute(self) -> None:
        pass


def trivial_flow() -> linear_flow.Flow:
    return linear_flow.Flow("trivial").add(*(Noop(name=f"t{i}") for i in range(8)))


def trivial_runner(backend) -> Callable[[int], None]:
    """One run of the reference flow on `backend` (None: taskflow in memory)."""

    def one(_: int) -> None:
        flow = trivial_flow()
        if backend is None:
            engines.run(flow, engine="serial")
            return
        book = tf_models.LogBook("bench")
        fd = tf_models.FlowDetail("trivial", uuid=str(uuid.uuid4()))
        book.add(fd)
        with _closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
        engines.run(flow, flow_detail=fd, book=book, backend=backend, engine="serial")

    return one


def bench_trivial_interleaved(paths: list[tuple[str, object, sa.Engine | None, int]], rounds: int = 5) -> list[Row]:
    """Each path runs `n` flows per round, the paths taking turns, and keeps
    its fastest round: on a shared machine, load that comes and goes then
    hits every path alike instead of whichever happened to run at the time."""
    runners = [trivial_runner(backend) for _, backend, _, _ in paths]
    counters = [Counter(engine, backend) if engine is not None else None for _, backend, engine, _ in paths]
    for one in runners:
        for _ in range(3):
            one(-1)
    for c in counters:
        if c:
            c.reset()
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, ((_, _, _, n), one) in enumerate(zip(paths, runners, strict=True)):
            best[i] = min(best[i], timed(n, one, warmup=0))
    rows = []
    for (label, _, _, n), ms, c in zip(paths, best, counters, strict=True):
        total = n * rounds
        statements, commits = c.totals() if c else (None, None)
        rows.append(Row(label, ms, c and statements / total, c and commits / total))
    return rows


class _closing:
    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()


def commit_floor(url: str, n: int = 500) -> float:
    """ms per single-row INSERT + COMMIT."""
    db = Database(url)
    t = sa.Table(
        "bench_commit_floor",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.String(32)),
    )
    t.drop(db.engine, checkfirst=True)
    t.create(db.engine)
    with db.engine.connect() as conn:
        start = time.perf_counter()
        for _ in range(n):
            conn.execute(t.insert().values(v="x"))
            conn.commit()
        ms = (time.perf_counter() - start) / n * 1000
    t.drop(db.engine)
    db.dispose()
    return ms


def trivial_bench(pg: str, sqlite: str, n: int) -> list[Row]:
    pg_engine = sa.create_engine(pg)
    stock = impl_sqlalchemy.SQLAlchemyBackend({"connection": pg}, engine=pg_engine)
    # Our backend on the engines a conductor uses (persistence.session: pool
    # pre-ping, SQLite pragmas), so the figures include what production pays.
    ours_pg, ours_sqlite = Database(pg).engine, Database(sqlite).engine
    schema.upgrade(Database(sqlite))
    return bench_trivial_interleaved(
        [
            ("8 trivial steps, taskflow in-memory", None, None, n),
            ("8 trivial steps, taskflow stock backend, PostgreSQL", stock, pg_engine, max(4, n // 4)),
            ("8 trivial steps, computeflow backend, PostgreSQL", Backend(ours_pg), ours_pg, n),
            ("8 trivial steps, computeflow backend, SQLite", Backend(ours_sqlite), ours_sqlite, n),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="flows per durable row (x5 for in-memory)")
    ap.add_argument("--pg", default=DEFAULT_PG)
    ap.add_argument("--mysql", default=DEFAULT_MYSQL)
    ap.add_argument("--trivial-only", action="store_true", help="only the 8-trivial-step reference flow")
    args = ap.parse_args()
    n = args.n
    import taskflow.version

    print(
        f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"taskflow {taskflow.version.version_string()}, SQLAlchemy {sa.__version__}"
    )

    tmp = tempfile.mkdtemp(prefix="cf-bench-")
    sqlite = f"sqlite:///{tmp}/bench.sqlite"
    pg = fresh_database(args.pg, "cf_bench")
    mysql = fresh_database(args.mysql, "cf_bench")

    def table(rows: list[Row], base: Row) -> None:
        print(f"\n{'path':<54} {'ms/flow':>8} {'flows/s':>8} {'x base':>7} {'trips':>6} {'commits':>7}")
        for r in rows:
            extra = f"{r.statements:6.0f} {r.commits:7.0f}" if r.statements is not None else ""
            print(f"{r.path:<54} {r.ms:8.1f} {1000 / r.ms:8.1f} {base.ms / r.ms:7.2f} {extra}")

    if args.trivial_only:
        print("\n== the reference flow: 8 trivial steps in a line; ratio vs taskflow in memory")
        rows = trivial_bench(pg, sqlite, n)
        table(rows, rows[0])
        return
    spawn_rows = [
        bench_spawn("spawn, taskflow in-memory (SQLite steps)", sqlite, n * 2, in_memory=True),
        bench_spawn("spawn, computeflow on SQLite", sqlite, n),
        bench_spawn("spawn, taskflow in-memory (PostgreSQL steps)", pg, n * 2, in_memory=True),
        bench_spawn("spawn, computeflow on PostgreSQL", pg, n),
        bench_spawn("spawn, computeflow on MariaDB", mysql, n),
    ]
    trivial_rows = trivial_bench(pg, sqlite, n)
    floors = {"SQLite": commit_floor(sqlite), "PostgreSQL": commit_floor(pg), "MariaDB": commit_floor(mysql)}

    print("\n== computeflow's spawn flow (12 steps, fake driver); ratio vs the in-memory run on the same database")
    table(spawn_rows[:2], spawn_rows[0])
    table(spawn_rows[2:], spawn_rows[2])
    print("\n== the reference flow: 8 trivial steps in a line; ratio vs taskflow in memory")
    table(trivial_rows, trivial_rows[0])
    print("\n== database commit floor (single-row INSERT + COMMIT)")
    durable = {"SQLite": spawn_rows[1], "PostgreSQL": spawn_rows[3], "MariaDB": spawn_rows[4]}
    for name, ms in floors.items():
        print(
            f"{name:<11} {1000 / ms:8.0f} commits/s ({ms:.3f} ms/commit); a durable spawn costs "
            f"{durable[name].ms / ms:5.0f} commits' worth of time"
        )


if __name__ == "__main__":
    main()
