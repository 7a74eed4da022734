"""The backend's write path.

* Deadlocks, serialization failures and dropped connections are retried
  inside it (the user never sees them), and a failed attempt leaves nothing
  half-remembered: the retry writes the same rows again and the flow log still
  has exactly one row per transition.
* A step's SUCCESS waits for the next step's RUNNING and commits with it (one
  commit per step); the flow's end commits lazily; a step that finishes while
  another step of its flow is still running is written at once.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc as sa_exc
from taskflow import engines, task
from taskflow.patterns import linear_flow, unordered_flow
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


class _ServerSideDeadlocks:
    """PostgreSQL: the server itself fails the first `times` flow-log inserts
    with SQLSTATE 40P01, so the error takes the real path (psycopg2, the
    backend's batch, SQLAlchemy's exception wrapping). A sequence counts them:
    it is not rolled back with the failed transaction."""

    def __init__(self, url: str, times: int) -> None:
        self.db = Database(url)
        with self.db.engine.begin() as c:
            c.exec_driver_sql("CREATE SEQUENCE test_deadlocks")
            c.exec_driver_sql(f"""
                CREATE FUNCTION test_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('test_deadlocks') <= {times} THEN
                        RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
                    END IF;
                    RETURN NEW;
                END $$""")
            c.exec_driver_sql(
                "CREATE TRIGGER test_deadlock BEFORE INSERT ON flow_log FOR EACH ROW EXECUTE FUNCTION test_deadlock()"
            )

    def failed(self) -> int:
        with self.db.engine.connect() as c:
            return c.exec_driver_sql("SELECT last_value FROM test_deadlocks").scalar()

    def remove(self) -> None:
        with self.db.engine.begin() as c:
            c.exec_driver_sql("DROP TRIGGER test_deadlock ON flow_log")
            c.exec_driver_sql("DROP FUNCTION test_deadlock()")
            c.exec_driver_sql("DROP SEQUENCE test_deadlocks")
        self.db.dispose()


def _run_flow(backend: Backend, flow=None) -> str:
    book = tf_models.LogBook("retry-test")
    fd = tf_models.FlowDetail("three", uuid=str(uuid.uuid4()))
    book.add(fd)
    backend.get_connection().save_logbook(book)
    flow = flow or linear_flow.Flow("three").add(*(Noop(name=f"t{i}") for i in range(3)))
    engines.run(flow, flow_detail=fd, book=book, backend=backend, engine="serial")
    return fd.uuid


def _flow_with_a_deferred_write(backend: Backend) -> str:
    """A finished flow with one flow-log row still waiting in memory, as a
    step's SUCCESS waits for the next step's RUNNING: the next read of the
    flow must commit it first."""
    from persistence.taskflow_rows import Statements

    flow_uuid = _run_flow(backend)
    row = dict(flow_detail_uuid=flow_uuid, atom_uuid=flow_uuid, step="t0", state="SUCCESS", attempt=1)
    row.update(at=None, result=None, error=None, traceback=None, epoch=None)
    backend.memory.pending[flow_uuid] = [Statements.insert_log_op(row)]
    return flow_uuid


def _log(db: Database, flow_uuid: str) -> list[tuple[str, str]]:
    with db.session() as s:
        rows = s.execute(
            sa.select(FlowLogEntry.step, FlowLogEntry.state)
            .where(FlowLogEntry.flow_detail_uuid == flow_uuid)
            .order_by(FlowLogEntry.id)
        ).all()
    return [tuple(r) for r in rows]


def _three_steps_logged(flow_uuid: str, db: Database) -> None:
    assert _log(db, flow_uuid) == (
        [("(flow)", "RUNNING")]
        + [(f"t{i}", st) for i in range(3) for st in ("RUNNING", "SUCCESS")]
        + [("(flow)", "SUCCESS")]
    )


def test_deadlocks_are_retried_inside_the_backend(url):
    db = Database(url)
    backend = Backend(db.engine)
    if backend.batches is not None:
        injected = _ServerSideDeadlocks(url, times=3)
        try:
            flow_uuid = _run_flow(backend)
            failed = injected.failed() - len(_log(db, flow_uuid))  # one nextval per row tried
        finally:
            injected.remove()
        assert failed == 3
    else:
        failed_atoms = _fail_first(db.engine, "UPDATE ATOMDETAILS", 3)
        failed_flows = _fail_first(db.engine, "UPDATE FLOWDETAILS", 2)
        failed_logs = _fail_first(db.engine, "INSERT INTO FLOW_LOG", 2)
        flow_uuid = _run_flow(backend)
        assert (len(failed_atoms), len(failed_flows), len(failed_logs)) == (3, 2, 2)
    backend.close()
    _three_steps_logged(flow_uuid, db)
    db.dispose()


def test_a_permanent_error_is_not_retried():
    err = sa_exc.OperationalError("UPDATE x", {}, Exception("syntax error"))
    assert not _transient(err)
    assert _transient(sa_exc.OperationalError("UPDATE x", {}, _Deadlock()))


class _KillWriterConnections(task.Task):
    """Terminates the backend's write connections (as a database restart
    would), so the next batch meets a dead connection."""

    def execute(self, url: str) -> None:
        killer = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with killer.connect() as c:
            killed = c.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'computeflow-flow-writes' "
                # Only this database's: pytest-xdist runs other workers' conductors
                # on the same server, and killing theirs fails their tests.
                "AND datname = current_database()"
            ).scalar()
        killer.dispose()
        assert killed >= 1


def test_postgresql_a_dropped_write_connection_is_replaced_and_the_batch_sent_again(postgresql_url):
    clean(postgresql_url)
    db = Database(postgresql_url)
    backend = Backend(db.engine)
    flow = linear_flow.Flow("three").add(
        Noop(name="t0"), _KillWriterConnections(name="t1", inject={"url": postgresql_url}), Noop(name="t2")
    )
    try:
        flow_uuid = _run_flow(backend, flow)
    finally:
        backend.close()
    _three_steps_logged(flow_uuid, db)
    db.dispose()


def _refuse_new_connections(url: str, refuse: bool = True) -> None:
    """Have the server refuse (or accept again) new connections to the test
    database, and kill the backend's write connections to it."""
    database = sa.make_url(url).database
    # From another database: the server refuses to lock out the current one.
    admin = sa.create_engine(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {'false' if refuse else 'true'}")
        c.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'computeflow-flow-writes' AND datname = '{database}'"
        )
    admin.dispose()


def test_postgresql_a_batch_that_cannot_get_a_connection_is_a_storage_failure(postgresql_url):
    """Found by the chaos scale-out test: the error of opening a connection
    escaped as psycopg2's own, which the runner records as the step failing
    (the operation reverted) instead of pausing it for another conductor."""
    from taskflow import exceptions as tf_exc

    clean(postgresql_url)
    db = Database(postgresql_url)
    backend = Backend(db.engine)
    flow_uuid = _flow_with_a_deferred_write(backend)
    _refuse_new_connections(postgresql_url)
    try:
        with pytest.raises(tf_exc.StorageFailure, match=f"Failed writing flow {flow_uuid}") as raised:
            backend.get_connection().get_flow_details(flow_uuid)
        assert "not currently accepting connections" in str(raised.value.cause)
        assert backend.memory.pending[flow_uuid], "the unsent write must be kept for the retry"
    finally:
        _refuse_new_connections(postgresql_url, refuse=False)
        backend.close()
        db.dispose()


def test_postgresql_sessions_that_lost_their_prepared_statements_prepare_them_again(postgresql_url):
    """A connection pooler may hand over a session without our PREPAREs."""
    clean(postgresql_url)
    db = Database(postgresql_url)
    backend = Backend(db.engine)
    try:
        _run_flow(backend)
        raw = backend.autocommit.raw_connection()  # the one pooled connection
        raw.driver_connection.cursor().execute("DEALLOCATE ALL")
        raw.close()
        flow_uuid = _run_flow(backend)
    finally:
        backend.close()
    _three_steps_logged(flow_uuid, db)
    db.dispose()


def _spy_batches(backend: Backend) -> list[tuple[str, list[str]]]:
    """(pool, states written) of every batch the backend sends."""
    sent: list[tuple[str, list[str]]] = []
    send = backend.batches.send

    def spy(pool, ops, fence=None):
        states = [
            p.get("a_state") or f"flow {p['f_state']}" for name, p in ops if name in ("update_atom", "update_flow")
        ]
        sent.append(("lazy" if pool is backend.autocommit_lazy else "durable", states))
        return send(pool, ops, fence)

    backend.batches.send = spy
    return sent


def test_postgresql_commits_each_result_with_the_next_running_state(postgresql_url):
    """RUNNING must be durable before the step's side effect; SUCCESS only
    before the next step starts: it rides in the next RUNNING's batch."""
    clean(postgresql_url)
    db = Database(postgresql_url)
    backend = Backend(db.engine)
    sent = _spy_batches(backend)
    try:
        _run_flow(backend)
        with backend.autocommit_lazy.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        with backend.autocommit.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        backend.close()
        db.dispose()
    assert sent == [
        ("durable", []),  # save_logbook: the new book and flow
        ("durable", ["flow None", "flow RUNNING", "RUNNING"]),  # the flow's atoms, its RUNNING, t0
        ("durable", ["SUCCESS", "RUNNING"]),
        ("durable", ["SUCCESS", "RUNNING"]),
        ("lazy", ["SUCCESS", "flow SUCCESS"]),
    ]


class _WaitForSibling(task.Task):
    """Runs until its sibling's SUCCESS is in the database (read on a
    connection of its own), so a deferred write would make it time out."""

    def execute(self, url: str, flow_uuid: str) -> None:
        reader = sa.create_engine(url)
        done = threading.Event()
        try:
            for _ in range(200):
                with reader.connect() as c:
                    if c.execute(
                        sa.select(sa.func.count())
                        .select_from(FlowLogEntry)
                        .where(
                            FlowLogEntry.flow_detail_uuid == flow_uuid,
                            FlowLogEntry.step == "quick",
                            FlowLogEntry.state == "SUCCESS",
                        )
                    ).scalar():
                        return
                done.wait(0.05)  # polling the database, not waiting for time to pass
        finally:
            reader.dispose()
        raise AssertionError("the finished sibling's SUCCESS never reached the database")


def test_a_step_that_finishes_beside_a_running_one_is_written_at_once(url):
    db = Database(url)
    backend = Backend(db.engine)
    flow_uuid = str(uuid.uuid4())
    book = tf_models.LogBook("parallel")
    fd = tf_models.FlowDetail("parallel", uuid=flow_uuid)
    book.add(fd)
    backend.get_connection().save_logbook(book)
    flow = unordered_flow.Flow("parallel").add(
        Noop(name="quick"), _WaitForSibling(name="slow", inject={"url": url, "flow_uuid": flow_uuid})
    )
    try:
        engines.run(flow, flow_detail=fd, book=book, backend=backend, engine="parallel")
    finally:
        backend.close()
    assert ("slow", "SUCCESS") in _log(db, flow_uuid)
    db.dispose()


def test_sqlite_syncs_each_step_and_lets_the_flow_end_ride_on_the_next_sync(sqlite_url):
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
    assert levels == [
        ("RUNNING", full),
        ("SUCCESS", full),
        ("RUNNING", full),
        ("SUCCESS", full),
        ("RUNNING", full),
        ("SUCCESS", normal),
    ]


def test_a_write_that_fails_on_any_path_is_a_storage_failure(sqlite_url):
    """Reading a flow first commits its deferred writes; when that commit
    fails, the error is taskflow's StorageFailure as on a step's own save (the
    runner pauses on it), not the driver's raw error, which the runner would
    record as the operation failing."""
    from taskflow import exceptions as tf_exc

    clean(sqlite_url)
    db = Database(sqlite_url)
    backend = Backend(db.engine)
    flow_uuid = _flow_with_a_deferred_write(backend)

    def disk_error(conn, cursor, statement, params, context, executemany):
        raise sa_exc.OperationalError(statement, params, Exception("disk I/O error"))

    event.listen(db.engine, "before_cursor_execute", disk_error)
    try:
        with pytest.raises(tf_exc.StorageFailure, match=f"Failed writing flow {flow_uuid}"):
            backend.get_connection().get_flow_details(flow_uuid)
    finally:
        event.remove(db.engine, "before_cursor_execute", disk_error)
        backend.close()
        db.dispose()
