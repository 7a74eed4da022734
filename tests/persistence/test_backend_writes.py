"""The backend's write path: deadlocks, serialization failures and dropped
connections are retried inside it (the user never sees them), and a failed
attempt leaves nothing half-remembered: the retry writes the same row again
and the flow log still has exactly one row per transition."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc as sa_exc
from taskflow import engines, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models as tf_models

from persistence.models import FlowLogEntry
from persistence.session import Database
from persistence.taskflow_backend import Backend, _transient
from tests.conftest import clean


class Noop(task.Task):
    def execute(self) -> None:
        pass


class _Deadlock(Exception):
    pgcode = "40P01"
    args = (1213, "Deadlock found when trying to get lock")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request) -> str:
    u = request.getfixturevalue(f"{request.param}_url")
    clean(u)
    return u


def _fail_first(engine: sa.Engine, startswith: str, times: int) -> list[str]:
    """Make the first `times` statements starting with `startswith` fail as a deadlock."""
    failed: list[str] = []

    def before(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith(startswith) and len(failed) < times:
            failed.append(statement)
            raise sa_exc.OperationalError(statement, params, _Deadlock())

    event.listen(engine, "before_cursor_execute", before)
    return failed


def _run_flow(backend: Backend) -> str:
    book = tf_models.LogBook("retry-test")
    fd = tf_models.FlowDetail("three", uuid=str(uuid.uuid4()))
    book.add(fd)
    backend.get_connection().save_logbook(book)
    flow = linear_flow.Flow("three").add(*(Noop(name=f"t{i}") for i in range(3)))
    engines.run(flow, flow_detail=fd, book=book, backend=backend, engine="serial")
    return fd.uuid


def test_deadlocks_on_atom_and_flow_writes_are_retried_inside_the_backend(url):
    db = Database(url)
    backend = Backend(db.engine)
    atom_engine = backend.autocommit if backend.autocommit is not None else db.engine
    failed_atoms = _fail_first(atom_engine, "WITH" if backend.autocommit is not None else "UPDATE ATOMDETAILS", 3)
    failed_flows = _fail_first(db.engine, "UPDATE FLOWDETAILS", 2)
    failed_logs = _fail_first(db.engine, "INSERT INTO FLOW_LOG", 2)
    try:
        flow_uuid = _run_flow(backend)
    finally:
        backend.close()
    assert (len(failed_atoms), len(failed_flows), len(failed_logs)) == (3, 2, 2)
    with db.session() as s:
        rows = s.execute(sa.select(FlowLogEntry.step, FlowLogEntry.state)
                         .where(FlowLogEntry.flow_detail_uuid == flow_uuid,
                                FlowLogEntry.step != "(flow)")
                         .order_by(FlowLogEntry.id)).all()
    assert [tuple(r) for r in rows] == [(f"t{i}", st) for i in range(3) for st in ("RUNNING", "SUCCESS")]
    db.dispose()


def test_a_permanent_error_is_not_retried():
    err = sa_exc.OperationalError("UPDATE x", {}, Exception("syntax error"))
    assert not _transient(err)
    assert _transient(sa_exc.OperationalError("UPDATE x", {}, _Deadlock()))


def test_postgresql_commits_records_of_done_work_lazily_and_running_states_durably(postgresql_url):
    """RUNNING must be flushed before the step's side effect; SUCCESS may ride
    on the next flushed commit (see _LAZY_STATES in the backend)."""
    clean(postgresql_url)
    db = Database(postgresql_url)
    backend = Backend(db.engine)
    seen: dict[str, list[str]] = {"durable": [], "lazy": []}
    for name, pool in (("durable", backend.autocommit), ("lazy", backend.autocommit_lazy)):
        event.listen(pool, "before_cursor_execute",
                     lambda c, cur, st, params, ctx, many, name=name:
                     seen[name].append(params.get("a_state") if isinstance(params, dict) else None))
    try:
        _run_flow(backend)
        with backend.autocommit_lazy.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        with backend.autocommit.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        backend.close()
        db.dispose()
    writes = {k: [st for st in v if st] for k, v in seen.items()}  # not the SHOW queries
    assert writes == {"durable": ["RUNNING"] * 3, "lazy": ["SUCCESS"] * 3}


def test_sqlite_syncs_running_states_and_lets_results_ride_on_the_next_sync(sqlite_url):
    clean(sqlite_url)
    db = Database(sqlite_url)
    backend = Backend(db.engine)
    levels: list[tuple[str, int]] = []  # (state written, PRAGMA synchronous at that moment)

    def before(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE ATOMDETAILS"):
            level = conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0]
            levels.append((context.compiled_parameters[0]["a_state"], level))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        _run_flow(backend)
        with db.engine.connect() as c:  # every pooled connection is back to FULL
            assert c.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        backend.close()
        db.dispose()
    full, normal = 2, 1
    assert [lvl for st, lvl in levels if st == "RUNNING"] == [full] * 3
    assert [lvl for st, lvl in levels if st == "SUCCESS"] == [normal] * 3
