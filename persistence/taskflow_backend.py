"""computeflow's taskflow persistence backend.

It is taskflow's SQLAlchemy backend with the hot path rewritten:

* One set of Table objects per backend. The stock `Connection.__init__` builds
  a new MetaData and Tables on every `get_connection()`, which taskflow calls
  for every save; that costs time and ~12 MB per flow here that is never
  returned.
* No read-before-write. taskflow's Storage always saves its complete copy of
  an atom, so we write it blindly. What the write needs to know (the atom's
  flow, its last state, how many times it ran, what was last written) is
  remembered per atom from the moment its flow was created or loaded, and
  forgotten when the flow ends.
* Progress-only saves are skipped: taskflow persists progress 0.0 and 1.0 for
  every task, which doubles the writes and tells an operator nothing.
* Every state transition appends a `flow_log` row in the *same transaction*
  as the state it describes, so the operator's log can never disagree with
  the state a resumed flow starts from.

The result: one transaction (UPDATE + INSERT) per step transition, i.e. two
commits per RUNNING/SUCCESS pair.

Fencing: a runner that owns an operation registers the ownership epoch it
took (`Backend.fence`). From then on every write of that flow is conditional
on `operations.epoch` still being that epoch, checked under a share lock in
the same statement or transaction as the write, so a take-over either happens
before the write (and the write is refused with `Fenced`) or waits for it.
Every flow-log row records the epoch of its writer.

One module (~540 lines) on purpose: the memo of what was written, the
write paths and the fencing are one invariant (a row is written once, under
the right epoch, with its log row); split, each part would need the others'
private state.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from taskflow import exceptions as tf_exc, states
from taskflow.persistence import models as tf_models
from taskflow.persistence.backends import impl_sqlalchemy as stock
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from persistence.models import FlowLogEntry, Operation, utcnow

RESULT_SUMMARY_LIMIT = 300
_INTERNAL_PREFIX = "_TaskFlow_"
_PROGRESS_KEYS = frozenset({"progress", "progress_details"})
_INTERRUPTED = frozenset({states.RUNNING, states.REVERTING})
# Transitions that record work already done. On PostgreSQL they commit without
# waiting for the WAL flush: the WAL is one sequential stream, and the next
# synchronous commit (the next step's RUNNING, the flow's own state, the
# operation's outcome), which always comes before any further side effect,
# flushes them with it. A crash that loses one loses only a suffix of the
# history, and the step it recorded runs again, as after any crash between
# a side effect and its record. RUNNING and REVERTING, which must be durable
# before their side effect, always wait for the flush. SQLite in WAL mode
# works the same way with `synchronous=NORMAL` for these commits.
_LAZY_STATES = frozenset({states.SUCCESS, states.REVERTED})
_FLOW_ENDED = frozenset({states.SUCCESS, states.REVERTED, states.FAILURE, states.REVERT_FAILURE})
_LOG = FlowLogEntry.__table__
_OPS = Operation.__table__


class Fenced(tf_exc.TaskFlowException):
    """This process no longer owns the operation: another conductor took it over.

    Not a StorageFailure: taskflow retries those (3 times, 5 s apart), and a
    superseded epoch never comes back.
    """

    def __init__(self, flow_uuid: str, epoch: int) -> None:
        super().__init__(f"operation {flow_uuid}: ownership epoch {epoch} was superseded by a "
                         "take-over; this conductor stops without writing")
        self.flow_uuid, self.epoch = flow_uuid, epoch


def summarize(value: object, limit: int = RESULT_SUMMARY_LIMIT) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_line(failure) -> str:
    """`Type: message` of a taskflow Failure (iterating one yields its type names)."""
    return f"{next(iter(failure), 'Error').rsplit('.', 1)[-1]}: {failure.exception_str}"


def _significant(row: dict) -> dict:
    """The row without progress bookkeeping: what is worth a write.

    `meta` is always copied: taskflow updates an atom's meta in place, and a
    remembered row that shared that dict would silently change with it.
    """
    meta = row.get("meta") or {}
    return dict(row, meta={k: v for k, v in meta.items() if k not in _PROGRESS_KEYS})


_TRANSIENT_ATTEMPTS = 5
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # PostgreSQL: serialization failure, deadlock
_TRANSIENT_MYSQL_ERRORS = frozenset({1205, 1213})  # lock wait timeout, deadlock


def _transient(e: sa_exc.DBAPIError) -> bool:
    """Whether a failed write may simply be tried again."""
    if e.connection_invalidated:
        return True
    if getattr(e.orig, "pgcode", None) in _TRANSIENT_SQLSTATES:
        return True
    args = getattr(e.orig, "args", ())
    return bool(args) and args[0] in _TRANSIENT_MYSQL_ERRORS


def _backoff(attempt: int) -> float:
    return min(0.5, 0.01 * 2 ** attempt)


@dataclass
class _AtomMemo:
    flow_uuid: str
    state: str | None
    attempts: int
    written: dict


class _Memory:
    """What the backend knows about atoms of flows in progress in this process."""

    def __init__(self) -> None:
        self.atoms: dict[str, _AtomMemo] = {}
        self.flows: dict[str, set[str]] = {}
        self.flow_states: dict[str, str | None] = {}
        #: flow uuid -> the ownership epoch every write of that flow must match.
        self.fences: dict[str, int] = {}
        self.lock = threading.Lock()

    def remember(self, flow_uuid: str, ad: tf_models.AtomDetail, attempts: int = 0) -> None:
        with self.lock:
            self.atoms[ad.uuid] = _AtomMemo(flow_uuid, ad.state, attempts, _significant(ad.to_dict()))
            self.flows.setdefault(flow_uuid, set()).add(ad.uuid)

    def forget_flow(self, flow_uuid: str) -> None:
        with self.lock:
            self.flow_states.pop(flow_uuid, None)
            for atom_uuid in self.flows.pop(flow_uuid, ()):
                self.atoms.pop(atom_uuid, None)


class _MemoUndo:
    """What one write transaction changed in the remembered atom state."""

    def __init__(self, memory: _Memory) -> None:
        self.memory = memory
        self.kept: dict[str, tuple[_AtomMemo, tuple]] = {}
        self.new: list[str] = []

    def keep(self, memo: _AtomMemo) -> None:
        self.kept.setdefault(id(memo), (memo, (memo.state, memo.attempts, memo.written)))

    def added(self, atom_uuid: str) -> None:
        self.new.append(atom_uuid)

    def restore(self) -> None:
        for memo, (state, attempts, written) in self.kept.values():
            memo.state, memo.attempts, memo.written = state, attempts, written
        with self.memory.lock:
            for atom_uuid in self.new:
                memo = self.memory.atoms.pop(atom_uuid, None)
                if memo is not None:
                    self.memory.flows.get(memo.flow_uuid, set()).discard(atom_uuid)


class _Statements:
    """The hot path's statements, built once: constructing a Core statement per
    write (and computing its cache key) cost more than executing it."""

    ATOM_COLUMNS = ("failure", "revert_failure", "meta", "name", "results", "revert_results",
                    "state", "version", "intention")
    LOG_COLUMNS = ("flow_detail_uuid", "atom_uuid", "step", "state", "attempt", "at", "result",
                   "error", "traceback", "epoch")

    def __init__(self, atoms: sa.Table) -> None:
        self.update_atom = (
            sa.update(atoms).where(atoms.c.uuid == sa.bindparam("a_uuid"))
            .values({c: sa.bindparam(f"a_{c}") for c in self.ATOM_COLUMNS}))
        self.insert_log = sa.insert(_LOG).values({c: sa.bindparam(f"l_{c}") for c in self.LOG_COLUMNS})
        self.update_atom_and_log = self.insert_log.add_cte(self.update_atom.cte("atom_update"))
        # Fenced variants (PostgreSQL): the UPDATE happens only while the
        # operation's epoch is the writer's, read under a share lock so that a
        # concurrent take-over waits for this statement (or it sees the new
        # epoch and writes nothing). The log row is inserted per updated atom,
        # so both rowcounts say whether the write happened.
        self.epoch_is_current = (
            sa.select(_OPS.c.id)
            .where(_OPS.c.id == sa.bindparam("f_op"), _OPS.c.epoch == sa.bindparam("f_epoch"))
            .with_for_update(read=True))
        fenced_update = self.update_atom.where(self.epoch_is_current.exists())
        self.update_atom_fenced = fenced_update
        updated = fenced_update.returning(atoms.c.uuid).cte("atom_update")
        log_values = sa.select(*[sa.bindparam(f"l_{c}", type_=_LOG.c[c].type)
                                 for c in self.LOG_COLUMNS]).select_from(updated)
        self.update_atom_and_log_fenced = (
            sa.insert(_LOG).from_select(self.LOG_COLUMNS, log_values).add_cte(updated))

    @classmethod
    def atom_params(cls, row: dict) -> dict:
        return {"a_uuid": row["uuid"], **{f"a_{c}": row.get(c) for c in cls.ATOM_COLUMNS}}

    @classmethod
    def log_params(cls, log: dict) -> dict:
        return {f"l_{c}": log[c] for c in cls.LOG_COLUMNS}


class Backend(stock.SQLAlchemyBackend):
    """Backend bound to an existing engine, sharing one table set."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__({"connection": str(engine.url)}, engine=engine)
        self.tables = tf_tables.fetch(sa.MetaData())
        self.converter = stock._Alchemist(self.tables)
        self.memory = _Memory()
        # PostgreSQL runs a data-modifying CTE atomically on its own, so atom
        # writes are single autocommitted statements on a pool of their own.
        self.single_statement_writes = engine.dialect.name == "postgresql"
        self.autocommit = _autocommit_engine(engine) if self.single_statement_writes else None
        self.autocommit_lazy = (_autocommit_engine(engine, synchronous_commit=False)
                                if self.single_statement_writes else None)
        self.statements = _Statements(self.tables.atomdetails)

    def get_connection(self) -> "Connection":
        return Connection(self, upgrade_lock=self._upgrade_lock)

    def log_interrupted_atoms(self, flow_detail: tf_models.FlowDetail) -> None:
        """Before resuming a flow: log each step that was RUNNING or REVERTING
        when its last owner stopped as starting a new attempt.

        taskflow runs such a step again from scratch but persists nothing for
        it (its state does not change), so without this row the log would not
        show that the step ran twice.
        """
        rows = []
        for ad in flow_detail:
            memo = self.memory.atoms.get(ad.uuid)
            if memo is None or ad.state not in _INTERRUPTED or ad.name.startswith(_INTERNAL_PREFIX):
                continue
            memo.attempts += 1
            rows.append(dict(flow_detail_uuid=flow_detail.uuid, atom_uuid=ad.uuid, step=ad.name,
                             state=ad.state, attempt=memo.attempts, at=utcnow(),
                             result="interrupted: running it again",
                             epoch=self.memory.fences.get(flow_detail.uuid)))
        if rows:
            with self.engine.begin() as conn:
                self.get_connection()._check_fence(conn, flow_detail.uuid)
                conn.execute(sa.insert(_LOG), rows)

    def fence(self, flow_uuid: str, epoch: int) -> None:
        """From now on, write this flow only while its operation's epoch is `epoch`."""
        self.memory.fences[flow_uuid] = epoch

    def unfence(self, flow_uuid: str) -> None:
        self.memory.fences.pop(flow_uuid, None)

    def close(self) -> None:
        super().close()
        for pool in (self.autocommit, self.autocommit_lazy):
            if pool is not None:
                pool.dispose()


def _autocommit_engine(engine: sa.Engine, synchronous_commit: bool = True) -> sa.Engine:
    """A small pool whose connections stay in autocommit.

    Switching a shared pool's connection to autocommit and back costs a
    `SET SESSION CHARACTERISTICS` round trip each way, and the pre-ping a
    SELECT 1 per checkout: together three extra round trips per one-statement
    write. A write on a connection the server dropped fails with a disconnect
    error instead, and is retried once on a fresh connection (see
    `Connection._write_atom_in_one_statement`).

    With `synchronous_commit=False` a commit returns before its WAL record is
    flushed (see `_LAZY_STATES` for when that is safe).
    """
    connect_args = {} if synchronous_commit else {"options": "-c synchronous_commit=off"}
    return sa.create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_pre_ping=False,
                            pool_size=4, max_overflow=12, connect_args=connect_args)


class Connection(stock.Connection):
    def __init__(self, backend: Backend, upgrade_lock) -> None:  # noqa: D107
        # Deliberately not calling the stock __init__: it rebuilds the tables.
        self._backend = backend
        self._upgrade_lock = upgrade_lock
        self._engine = backend.engine
        self._tables = backend.tables
        self._converter = backend.converter
        self._memory = backend.memory

    def upgrade(self) -> None:
        """Schema is owned by computeflow's migrations (persistence.schema)."""

    # -- loading: remember every atom of the flows we hand out -----------------
    def save_logbook(self, book):
        saved = super().save_logbook(book)
        for fd in saved:
            self._memory.flow_states[fd.uuid] = fd.state
            for ad in fd:
                self._memory.remember(fd.uuid, ad)
        return saved

    def get_logbook(self, book_uuid, lazy=False):
        book = super().get_logbook(book_uuid, lazy=lazy)
        if not lazy:
            for fd in book:
                self._remember_loaded(fd)
        return book

    def get_flow_details(self, fd_uuid, lazy=False):
        fd = super().get_flow_details(fd_uuid, lazy=lazy)
        if not lazy:
            self._remember_loaded(fd)
        return fd

    def _remember_loaded(self, fd: tf_models.FlowDetail) -> None:
        with self._engine.connect() as conn:
            runs = dict(conn.execute(
                sa.select(_LOG.c.atom_uuid, sa.func.count())
                .where(_LOG.c.flow_detail_uuid == fd.uuid, _LOG.c.state == states.RUNNING)
                .group_by(_LOG.c.atom_uuid)
            ).all())
        self._memory.flow_states[fd.uuid] = fd.state
        for ad in fd:
            self._memory.remember(fd.uuid, ad, runs.get(ad.uuid, 0))

    # -- the hot path ------------------------------------------------------------
    def update_atom_details(self, atom_detail):
        memo = self._memory.atoms.get(atom_detail.uuid)
        if memo is None:  # not loaded through us (e.g. a tool editing one atom)
            return self._update_atom_details_slowly(atom_detail)
        if _significant(atom_detail.to_dict()) == memo.written:
            return atom_detail  # nothing but progress changed: no transaction at all
        try:
            if self._backend.single_statement_writes:
                self._write_atom_in_one_statement(memo, atom_detail)
            else:
                def write(conn: sa.Connection, undo: _MemoUndo) -> None:
                    self._check_fence(conn, memo.flow_uuid)
                    self._write_atom(conn, memo, atom_detail, undo)
                self._transaction(write, lazy=atom_detail.state in _LAZY_STATES)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}")
        return atom_detail

    def update_flow_details(self, flow_detail):
        flows = self._tables.flowdetails

        def write(conn: sa.Connection, undo: _MemoUndo) -> None:
            changed = conn.execute(
                sa.update(flows).where(flows.c.uuid == flow_detail.uuid).values(
                    state=flow_detail.state, meta=flow_detail.meta, name=flow_detail.name,
                    updated_at=utcnow())
            ).rowcount
            if not changed:
                raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
            self._check_fence(conn, flow_detail.uuid)
            previous = self._memory.flow_states.get(flow_detail.uuid)
            new_atoms = []
            for ad in flow_detail:
                memo = self._memory.atoms.get(ad.uuid)
                if memo is None:
                    new_atoms.append(dict(ad.to_dict(), parent_uuid=flow_detail.uuid,
                                          atom_type=tf_models.atom_detail_type(ad)))
                else:
                    self._write_atom(conn, memo, ad, undo)
            if new_atoms:  # one multi-row INSERT, not one per atom
                conn.execute(sa.insert(self._tables.atomdetails), new_atoms)
                for ad in flow_detail:
                    if ad.uuid not in self._memory.atoms:
                        self._memory.remember(flow_detail.uuid, ad)
                        undo.added(ad.uuid)
            if flow_detail.state and flow_detail.state != previous:
                conn.execute(sa.insert(_LOG).values(
                    flow_detail_uuid=flow_detail.uuid, atom_uuid=flow_detail.uuid,
                    step="(flow)", state=flow_detail.state, attempt=0, at=utcnow(),
                    epoch=self._memory.fences.get(flow_detail.uuid)))

        try:
            self._transaction(write)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating flow details {flow_detail.uuid}")
        if flow_detail.state in _FLOW_ENDED:
            self._memory.forget_flow(flow_detail.uuid)
        else:
            self._memory.flow_states[flow_detail.uuid] = flow_detail.state
        return flow_detail

    def _transaction(self, body: Callable[[sa.Connection, "_MemoUndo"], None],
                     lazy: bool = False) -> None:
        """Run `body` in a transaction, retried on deadlocks, serialization
        failures and dropped connections; what a failed attempt changed in the
        remembered atom state is put back first, so the retry writes it again.

        `lazy` (SQLite): commit without syncing the WAL file; the next
        synchronous commit syncs it (see _LAZY_STATES).
        """
        lazy = lazy and self._engine.dialect.name == "sqlite"
        for attempt in range(_TRANSIENT_ATTEMPTS):
            undo = _MemoUndo(self._memory)
            try:
                with self._engine.connect() as conn:
                    if lazy:  # outside the transaction: SQLite refuses it inside
                        conn.connection.driver_connection.execute("PRAGMA synchronous=NORMAL")
                    try:
                        with conn.begin():
                            body(conn, undo)
                    finally:
                        if lazy:
                            conn.connection.driver_connection.execute("PRAGMA synchronous=FULL")
                return
            except sa_exc.DBAPIError as e:
                undo.restore()
                if attempt + 1 == _TRANSIENT_ATTEMPTS or not _transient(e):
                    raise
                time.sleep(_backoff(attempt))
            except BaseException:
                undo.restore()
                raise

    def _write_atom(self, conn: sa.Connection, memo: _AtomMemo, ad: tf_models.AtomDetail,
                    undo: "_MemoUndo") -> None:
        row = ad.to_dict()
        significant = _significant(row)
        if significant == memo.written:
            return  # nothing but progress changed
        undo.keep(memo)
        st = self._backend.statements
        conn.execute(st.update_atom, st.atom_params(row))
        attempts, log = self._transition(memo, ad)
        if log is not None:
            conn.execute(st.insert_log, st.log_params(log))
        memo.state, memo.attempts, memo.written = ad.state, attempts, significant

    def _write_atom_in_one_statement(self, memo: _AtomMemo, ad: tf_models.AtomDetail) -> None:
        """PostgreSQL: `WITH u AS (UPDATE atomdetails ...) INSERT INTO flow_log ...`,
        autocommitted: one round trip instead of BEGIN, UPDATE, INSERT, COMMIT,
        and still one atomic statement."""
        row = ad.to_dict()
        st = self._backend.statements
        attempts, log = self._transition(memo, ad)
        params = st.atom_params(row)
        epoch = self._memory.fences.get(memo.flow_uuid)
        if epoch is None:
            stmt = st.update_atom if log is None else st.update_atom_and_log
        else:
            stmt = st.update_atom_fenced if log is None else st.update_atom_and_log_fenced
            params.update(f_op=memo.flow_uuid, f_epoch=epoch)
        if log is not None:
            params.update(st.log_params(log))
        pool = (self._backend.autocommit_lazy if ad.state in _LAZY_STATES
                else self._backend.autocommit)
        for attempt in range(_TRANSIENT_ATTEMPTS):
            try:
                with pool.connect() as conn:
                    written = conn.execute(stmt, params).rowcount
                break
            except sa_exc.DBAPIError as e:
                # The pool does not pre-ping: a connection the server dropped
                # (a database restart) fails here first, and is retried like a
                # deadlock or a serialization failure.
                if attempt + 1 == _TRANSIENT_ATTEMPTS or not _transient(e):
                    raise
                time.sleep(_backoff(attempt))
        if epoch is not None and written != 1:
            raise Fenced(memo.flow_uuid, epoch)
        memo.state, memo.attempts, memo.written = ad.state, attempts, _significant(row)

    def _check_fence(self, conn: sa.Connection, flow_uuid: str) -> None:
        """Inside a write transaction: refuse if the operation was taken over.

        The share lock makes a concurrent take-over wait for this transaction.
        """
        epoch = self._memory.fences.get(flow_uuid)
        if epoch is None:
            return
        current = conn.execute(self._backend.statements.epoch_is_current,
                               {"f_op": flow_uuid, "f_epoch": epoch}).first()
        if current is None:
            raise Fenced(flow_uuid, epoch)

    def _transition(self, memo: _AtomMemo, ad: tf_models.AtomDetail) -> tuple[int, dict | None]:
        """The attempt count after this write, and the flow-log row it needs."""
        if ad.state == memo.state:
            return memo.attempts, None
        attempts = memo.attempts + 1 if ad.state == states.RUNNING else memo.attempts
        return attempts, _log_row(memo.flow_uuid, ad, max(attempts, 1),
                                  self._memory.fences.get(memo.flow_uuid))

    def _update_atom_details_slowly(self, atom_detail):
        atoms = self._tables.atomdetails
        try:
            with self._engine.begin() as conn:
                row = conn.execute(sa.select(atoms).where(atoms.c.uuid == atom_detail.uuid)).first()
                if row is None:
                    raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
                existing = self._converter.convert_atom_detail(row._mapping)
                before = existing.state
                self._update_atom_details(conn, atom_detail, existing)
                if existing.state != before:
                    runs = conn.execute(sa.select(sa.func.count()).select_from(_LOG).where(
                        _LOG.c.atom_uuid == existing.uuid, _LOG.c.state == states.RUNNING)).scalar_one()
                    attempt = runs + 1 if existing.state == states.RUNNING else max(runs, 1)
                    flow_uuid = row._mapping["parent_uuid"]
                    self._check_fence(conn, flow_uuid)
                    log = _log_row(flow_uuid, existing, attempt, self._memory.fences.get(flow_uuid))
                    if log is not None:
                        conn.execute(sa.insert(_LOG).values(log))
            return existing
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}")



def _log_row(flow_uuid: str, ad: tf_models.AtomDetail, attempt: int,
             epoch: int | None = None) -> dict | None:
    """The flow_log row for an atom's new state (None for taskflow's injector)."""
    if ad.name.startswith(_INTERNAL_PREFIX):
        return None  # taskflow's own injector atom holds the store, not a step
    state = ad.state or states.PENDING
    failure = ad.revert_failure if state == states.REVERT_FAILURE else ad.failure
    error = traceback = result = None
    if state in (states.FAILURE, states.REVERT_FAILURE) and failure is not None:
        error = failure_line(failure)
        traceback = failure.traceback_str
    elif state == states.SUCCESS:
        result = summarize(ad.results)
    return dict(flow_detail_uuid=flow_uuid, atom_uuid=ad.uuid, step=ad.name, state=state,
                attempt=attempt, at=utcnow(), result=result, error=error, traceback=traceback,
                epoch=epoch)
