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
* Records of work already done wait for the next write that must be durable
  (see `_DEFERRABLE_ATOM_STATES`): a step's SUCCESS is committed with the next
  step's RUNNING, in one transaction, so a serial flow costs one commit per
  step. On PostgreSQL that transaction is one round trip (`pg_batch`).

Fencing: a runner that owns an operation registers the ownership epoch it
took (`Backend.fence`). From then on every write of that flow is conditional
on `operations.epoch` still being that epoch, checked under a share lock in
the same transaction as the write, so a take-over either happens before the
write (and the write is refused with `Fenced`) or waits for it. Every
flow-log row records the epoch of its writer.

The rows and statements themselves (what a logbook, flow or atom becomes)
are in `taskflow_rows`. The rest stays one module (~550 lines) on purpose:
the memo of what was written, the deferred writes, the write paths and the
fencing are one invariant (a row is written once, under the right epoch, with
its log row, before anything that depends on it); split, each part would need
the others' private state.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from taskflow import exceptions as tf_exc, states
from taskflow.persistence import models as tf_models
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from persistence import stock_backend
from persistence.models import FLOW_STEP, utcnow
from persistence.pg_batch import FENCED_SQLSTATE, BatchRenderer, Op
from persistence.session import count_open_connections, release_idle
from persistence.taskflow_rows import FLOW_LOG, INTERNAL_PREFIX, Statements, log_row, significant_row

stock: Any = stock_backend.load()  # taskflow's impl_sqlalchemy, its alembic migrations loaded on first use

_INTERRUPTED = frozenset({states.RUNNING, states.REVERTING})
# Transitions that record work already done. They need not be durable before
# anything happens in the world; they must be durable before anything that
# depends on them: the next step's RUNNING, the flow's end. So, when no other
# step of the flow is in flight, such a write waits in memory (`_Memory.pending`)
# and is committed in the transaction of the flow's next write, which always
# comes before any further side effect. A crash before then loses only a
# suffix of the history, and the step it recorded runs again, as after any
# crash between a side effect and its record. RUNNING and REVERTING, which
# must be durable before their side effect, always commit (and flush) at once.
_DEFERRABLE_ATOM_STATES = frozenset({states.SUCCESS, states.REVERTED})
# A flow's own writes that record no outcome: its new atoms and RUNNING.
_DEFERRABLE_FLOW_STATES = frozenset({None, states.PENDING, states.RESUMING, states.RUNNING})
# When another step of the flow is still in flight (a parallel branch), a
# record of done work is written at once, but lazily: on PostgreSQL it commits
# without waiting for the WAL flush, on SQLite (WAL mode) with
# `synchronous=NORMAL`. The WAL is one sequential stream, so the next
# synchronous commit, which comes before any further side effect, flushes it.
_LAZY_STATES = _DEFERRABLE_ATOM_STATES
# A flow's happy or reverted end records work done too (its last step's record
# commits with it); whoever acts on the end commits durably after reading it
# (the runner records the operation's outcome), which flushes it.
_LAZY_FLOW_STATES = frozenset({states.SUCCESS, states.REVERTED})
_FLOW_ENDED = frozenset({states.SUCCESS, states.REVERTED, states.FAILURE, states.REVERT_FAILURE})


class Fenced(tf_exc.TaskFlowException):
    """This process no longer owns the operation: another conductor took it over.

    Not a StorageFailure: taskflow retries those (3 times, 5 s apart), and a
    superseded epoch never comes back.
    """

    def __init__(self, flow_uuid: str, epoch: int) -> None:
        super().__init__(
            f"operation {flow_uuid}: ownership epoch {epoch} was superseded by a "
            "take-over; this conductor stops without writing"
        )
        self.flow_uuid, self.epoch = flow_uuid, epoch


_TRANSIENT_ATTEMPTS = 5
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # PostgreSQL: serialization failure, deadlock
_TRANSIENT_MYSQL_ERRORS = frozenset({1205, 1213})  # lock wait timeout, deadlock


def _transient(e: sa_exc.DBAPIError) -> bool:
    """Whether a failed write may simply be tried again."""
    if e.connection_invalidated:
        return True
    if getattr(e.orig, "pgcode", None) in _TRANSIENT_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(e.orig, "args", ())
    return bool(args) and args[0] in _TRANSIENT_MYSQL_ERRORS


@contextlib.contextmanager
def _storage_failure(what: str) -> Iterator[None]:
    """A database error leaves as taskflow's StorageFailure: the runner pauses
    an operation on it instead of recording a failure."""
    try:
        yield
    except sa_exc.SQLAlchemyError:
        tf_exc.raise_with_cause(tf_exc.StorageFailure, what)


def _backoff(attempt: int) -> float:
    return min(0.5, 0.01 * 2.0**attempt)


@dataclass
class _AtomMemo:
    flow_uuid: str
    state: str | None
    attempts: int
    written: dict[str, Any]


class _Memory:
    """What the backend knows about flows in progress in this process: what
    each atom's row holds (or will hold once `pending` is committed), the
    writes waiting for the flow's next commit, and the fences."""

    def __init__(self) -> None:
        self.atoms: dict[str, _AtomMemo] = {}
        self.flows: dict[str, set[str]] = {}
        self.flow_states: dict[str, str | None] = {}
        #: flow uuid -> writes to commit before (and with) the flow's next one.
        self.pending: dict[str, list[Op]] = {}
        #: flow uuid -> the ownership epoch every write of that flow must match.
        self.fences: dict[str, int] = {}
        #: flow uuid -> held while that flow's pending writes are taken or sent.
        self.flow_locks: dict[str, threading.Lock] = {}
        self.lock = threading.Lock()

    def remember(self, flow_uuid: str, ad: tf_models.AtomDetail, attempts: int = 0) -> None:
        with self.lock:
            self.atoms[ad.uuid] = _AtomMemo(flow_uuid, ad.state, attempts, significant_row(ad.to_dict()))
            self.flows.setdefault(flow_uuid, set()).add(ad.uuid)

    def flow_lock(self, flow_uuid: str) -> threading.Lock:
        with self.lock:
            return self.flow_locks.setdefault(flow_uuid, threading.Lock())

    def others_in_flight(self, memo: _AtomMemo) -> bool:
        """Whether another atom of this atom's flow is RUNNING or REVERTING."""
        atoms = self.atoms
        return any(
            other is not memo and other.state in _INTERRUPTED
            for other in (atoms.get(u) for u in self.flows.get(memo.flow_uuid, ()))
            if other is not None
        )

    def forget_flow(self, flow_uuid: str) -> None:
        """Drop what is known of a flow, its unsent writes included."""
        with self.lock:
            self.flow_states.pop(flow_uuid, None)
            self.pending.pop(flow_uuid, None)
            self.flow_locks.pop(flow_uuid, None)
            for atom_uuid in self.flows.pop(flow_uuid, ()):
                self.atoms.pop(atom_uuid, None)


class Backend(stock.SQLAlchemyBackend):
    """Backend bound to an existing engine, sharing one table set."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__({"connection": str(engine.url)}, engine=engine)
        self.tables = tf_tables.fetch(sa.MetaData())
        self.converter = stock._Alchemist(self.tables)
        self.memory = _Memory()
        self.statements = Statements(self.tables)
        # PostgreSQL runs a multi-statement query as one implicit transaction,
        # so a write batch is one autocommitted round trip on a pool of its own.
        self.batches = None
        self.autocommit = self.autocommit_lazy = None
        if engine.dialect.name == "postgresql":
            self.batches = batches = BatchRenderer(
                engine.dialect, self.statements.for_batches(), prepared=Statements.PER_STEP
            )
            self.autocommit = _autocommit_engine(engine)
            self.autocommit_lazy = _autocommit_engine(engine, synchronous_commit=False)
            for pool in (self.autocommit, self.autocommit_lazy):
                sa.event.listen(pool, "connect", lambda dbapi_conn, _: batches.prepare(dbapi_conn))

    def get_connection(self) -> Connection:
        return Connection(self, upgrade_lock=self._upgrade_lock)

    def _write_pools(self) -> list[sa.Engine]:
        """The autocommit pools of the write batches (PostgreSQL only)."""
        return [pool for pool in (self.autocommit, self.autocommit_lazy) if pool is not None]

    def release_idle_connections(self) -> None:
        """After a burst: close the write pools' idle connections but one
        each, its statements prepared (persistence.session.release_idle)."""
        for pool in self._write_pools():
            release_idle(pool)

    def log_interrupted_atoms(self, flow_detail: tf_models.FlowDetail) -> None:
        """Before resuming a flow: log each step that was RUNNING or REVERTING
        when its last owner stopped as starting a new attempt.

        taskflow runs such a step again from scratch but persists nothing for
        it (its state does not change), so without this row the log would not
        show that the step ran twice.
        """
        ops, memos = [], []
        for ad in flow_detail:
            memo = self.memory.atoms.get(ad.uuid)
            if memo is None or ad.state not in _INTERRUPTED or ad.name.startswith(INTERNAL_PREFIX):
                continue
            memos.append(memo)
            ops.append(
                Statements.insert_log_op(
                    dict(
                        flow_detail_uuid=flow_detail.uuid,
                        atom_uuid=ad.uuid,
                        step=ad.name,
                        state=ad.state,
                        attempt=memo.attempts + 1,
                        at=utcnow(),
                        result="interrupted: running it again",
                        epoch=self.memory.fences.get(flow_detail.uuid),
                    )
                )
            )
        if ops:
            self.get_connection().send(flow_detail.uuid, ops)
            for memo in memos:
                memo.attempts += 1

    def flush(self, flow_uuid: str) -> None:
        """Commit the flow's deferred writes now, if it has any."""
        if self.memory.pending.get(flow_uuid):
            self.get_connection().send(flow_uuid, [])

    def fence(self, flow_uuid: str, epoch: int) -> None:
        """From now on, write this flow only while its operation's epoch is `epoch`."""
        self.memory.fences[flow_uuid] = epoch

    def unfence(self, flow_uuid: str) -> None:
        """The runner stopped running this flow: forget it, with any write it
        did not get to commit (as if the process had stopped there; the next
        owner loads the flow afresh)."""
        self.memory.fences.pop(flow_uuid, None)
        self.memory.forget_flow(flow_uuid)

    def close(self) -> None:
        super().close()
        for pool in self._write_pools():
            pool.dispose()


def _autocommit_engine(engine: sa.Engine, synchronous_commit: bool = True) -> sa.Engine:
    """A small pool whose connections stay in autocommit.

    Switching a shared pool's connection to autocommit and back costs a
    `SET SESSION CHARACTERISTICS` round trip each way, and the pre-ping a
    SELECT 1 per checkout: together three extra round trips per batch. A batch
    on a connection the server dropped fails with a disconnect error instead,
    and is retried on a fresh connection (see `Connection.send`).

    With `synchronous_commit=False` a commit returns before its WAL record is
    flushed (see `_LAZY_STATES` for when that is safe).
    """
    connect_args = {"application_name": "computeflow-flow-writes"}
    if not synchronous_commit:
        connect_args["options"] = "-c synchronous_commit=off"
    return count_open_connections(
        sa.create_engine(
            engine.url,
            isolation_level="AUTOCOMMIT",
            pool_pre_ping=False,
            pool_use_lifo=True,  # the connection kept after a burst is the one lent next (release_idle)
            pool_size=4,
            max_overflow=12,
            connect_args=connect_args,
        )
    )


class Connection(stock.Connection):
    def __init__(self, backend: Backend, upgrade_lock: threading.Lock) -> None:  # noqa: D107
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
    # Deferred writes of a flow are committed before it is read or saved again,
    # so this process always reads what it wrote.
    def save_logbook(self, book: tf_models.LogBook) -> tf_models.LogBook:
        """A new logbook is inserted blindly, flows and atoms with it, in one
        transaction (one round trip on PostgreSQL); only if it exists already
        does taskflow's read-and-merge path run."""
        if self.add_logbook(book):
            return book
        saved = super().save_logbook(book)
        self._remember_saved(saved)
        return saved

    def add_logbook(self, book: tf_models.LogBook) -> bool:
        """Insert a new logbook with its flows and atoms in one transaction;
        False, with nothing written, if a logbook with its uuid exists (unlike
        `save_logbook`, never merged into it: the stored one is what counts)."""
        for fd in book:
            self._backend.flush(fd.uuid)
        try:
            self._execute(Statements.insert_book_ops(book), None, lazy=False)
        except sa_exc.IntegrityError:
            return False
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, f"Failed saving logbook '{book.uuid}'")
        self._remember_saved(book)
        return True

    def _remember_saved(self, book: tf_models.LogBook) -> None:
        for fd in book:
            self._memory.flow_states[fd.uuid] = fd.state
            for ad in fd:
                self._memory.remember(fd.uuid, ad)

    def get_logbook(self, book_uuid: str, lazy: bool = False) -> tf_models.LogBook:
        book = super().get_logbook(book_uuid, lazy=lazy)
        unsent = [fd.uuid for fd in book if self._memory.pending.get(fd.uuid)]
        if unsent:  # rare: read while one of its flows is between two steps
            for flow_uuid in unsent:
                self._backend.flush(flow_uuid)
            book = super().get_logbook(book_uuid, lazy=lazy)
        if not lazy:
            for fd in book:
                self._remember_loaded(fd)
        return book

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> tf_models.FlowDetail:
        self._backend.flush(fd_uuid)
        fd = super().get_flow_details(fd_uuid, lazy=lazy)
        if not lazy:
            self._remember_loaded(fd)
        return fd

    def _remember_loaded(self, fd: tf_models.FlowDetail) -> None:
        with _storage_failure(f"Failed reading flow {fd.uuid}"), self._engine.connect() as conn:
            runs = dict(
                conn.execute(
                    sa.select(FLOW_LOG.c.atom_uuid, sa.func.count())
                    .where(FLOW_LOG.c.flow_detail_uuid == fd.uuid, FLOW_LOG.c.state == states.RUNNING)
                    .group_by(FLOW_LOG.c.atom_uuid)
                ).all()
            )
        self._memory.flow_states[fd.uuid] = fd.state
        for ad in fd:
            self._memory.remember(fd.uuid, ad, runs.get(ad.uuid, 0))

    # -- the hot path ------------------------------------------------------------
    def update_atom_details(self, atom_detail: tf_models.AtomDetail) -> tf_models.AtomDetail:
        memo = self._memory.atoms.get(atom_detail.uuid)
        if memo is None:  # not loaded through us (e.g. a tool editing one atom)
            return self._update_atom_details_slowly(atom_detail)
        change = self._atom_change(memo, atom_detail)
        if change is None:
            return atom_detail  # nothing but progress changed: no write at all
        ops, remember = change
        deferrable = atom_detail.state in _DEFERRABLE_ATOM_STATES and not self._memory.others_in_flight(memo)
        self._write(memo.flow_uuid, ops, deferrable, lazy=atom_detail.state in _LAZY_STATES)
        remember()
        return atom_detail

    def update_flow_details(self, flow_detail: tf_models.FlowDetail) -> tf_models.FlowDetail:
        ops: list[Op] = []
        remembers: list[Callable[[], None]] = []
        deferrable = flow_detail.state in _DEFERRABLE_FLOW_STATES
        new_atoms = []
        for ad in flow_detail:
            memo = self._memory.atoms.get(ad.uuid)
            if memo is None:
                ops.append(Statements.insert_atom_op(flow_detail.uuid, ad))
                new_atoms.append(ad)
                continue
            change = self._atom_change(memo, ad)
            if change is not None:
                ops.extend(change[0])
                remembers.append(change[1])
                deferrable = deferrable and ad.state in _DEFERRABLE_ATOM_STATES
        if flow_detail.state and flow_detail.state != self._memory.flow_states.get(flow_detail.uuid):
            ops.append(
                Statements.insert_log_op(
                    dict(
                        flow_detail_uuid=flow_detail.uuid,
                        atom_uuid=flow_detail.uuid,
                        step=FLOW_STEP,
                        state=flow_detail.state,
                        attempt=0,
                        at=utcnow(),
                        epoch=self._memory.fences.get(flow_detail.uuid),
                    )
                )
            )
        ops.append(Statements.update_flow_op(flow_detail))  # last: its row count is the batch's
        changed = self._write(flow_detail.uuid, ops, deferrable, lazy=flow_detail.state in _LAZY_FLOW_STATES)
        if changed == 0:
            raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
        for remember in remembers:
            remember()
        for ad in new_atoms:
            self._memory.remember(flow_detail.uuid, ad)
        if flow_detail.state in _FLOW_ENDED:
            self._memory.forget_flow(flow_detail.uuid)
        else:
            self._memory.flow_states[flow_detail.uuid] = flow_detail.state
        return flow_detail

    def _atom_change(self, memo: _AtomMemo, ad: tf_models.AtomDetail) -> tuple[list[Op], Callable[[], None]] | None:
        """The statements that bring the atom's row (and log) to `ad`, and how
        to update the memo once they are committed; None if nothing changed."""
        row = ad.to_dict()
        significant = significant_row(row)
        if significant == memo.written:
            return None
        attempts, log = self._transition(memo, ad)
        ops = [Statements.update_atom_op(row)]
        if log is not None:
            ops.append(Statements.insert_log_op(log))

        def remember() -> None:
            memo.state, memo.attempts, memo.written = ad.state, attempts, significant

        return ops, remember

    def _write(self, flow_uuid: str, ops: list[Op], deferrable: bool, lazy: bool = False) -> int | None:
        """Defer `ops` to the flow's next commit, or commit them now with the
        flow's deferred writes; the row count of the last statement (None if
        deferred)."""
        if deferrable:
            with self._memory.flow_lock(flow_uuid):
                self._memory.pending.setdefault(flow_uuid, []).extend(ops)
            return None
        return self.send(flow_uuid, ops, lazy=lazy)

    def send(self, flow_uuid: str, ops: list[Op], lazy: bool = False) -> int:
        """Commit the flow's deferred writes and then `ops`, in one transaction
        under the flow's fence. The deferred writes are dropped from memory only
        once committed. Returns the row count of the last statement.

        A database error leaves as taskflow's StorageFailure, whichever path
        got here (a step's save, a read that flushes first, the resume log):
        the runner pauses the operation on it instead of recording a failure."""
        with self._memory.flow_lock(flow_uuid):
            pending = self._memory.pending.get(flow_uuid, [])
            taken = len(pending)
            if not taken and not ops:
                return 0  # flushed meanwhile by another thread
            with _storage_failure(f"Failed writing flow {flow_uuid}"):
                rowcount = self._execute(pending + ops, flow_uuid, lazy)
            del pending[:taken]
            return rowcount

    def _execute(self, batch: list[Op], flow_uuid: str | None, lazy: bool) -> int:
        """Run `batch` as one transaction (fenced if `flow_uuid` has a fence),
        retried on deadlocks, serialization failures and dropped connections."""
        epoch = self._memory.fences.get(flow_uuid) if flow_uuid else None
        for attempt in range(_TRANSIENT_ATTEMPTS):
            try:
                if self._backend.batches is not None:
                    return self._send_batch(flow_uuid, epoch, batch, lazy)
                return self._send_transaction(flow_uuid, batch, lazy)
            except sa_exc.DBAPIError as e:
                if getattr(e.orig, "pgcode", None) == FENCED_SQLSTATE:  # only a fenced batch raises it
                    raise Fenced(flow_uuid or "?", epoch if epoch is not None else -1) from None
                if attempt + 1 == _TRANSIENT_ATTEMPTS or not _transient(e):
                    raise
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def _send_batch(self, flow_uuid: str | None, epoch: int | None, batch: list[Op], lazy: bool) -> int:
        """PostgreSQL: the whole batch as one autocommitted multi-statement
        query (`pg_batch`), behind `computeflow_assert_epoch` when fenced. The
        pool does not pre-ping: a connection the server dropped (a restart)
        fails here and the caller retries on a fresh one."""
        pool = self._backend.autocommit_lazy if lazy else self._backend.autocommit
        batches = self._backend.batches
        assert batches is not None and pool is not None  # PostgreSQL: both made at start
        fence = None if epoch is None or flow_uuid is None else (flow_uuid, epoch)
        return batches.send(pool, batch, fence)

    def _send_transaction(self, flow_uuid: str | None, batch: list[Op], lazy: bool) -> int:
        """SQLite, MariaDB: BEGIN, fence check, the statements, COMMIT.

        `lazy` (SQLite): commit without syncing the WAL file; the next
        synchronous commit syncs it (see _LAZY_STATES)."""
        lazy = lazy and self._engine.dialect.name == "sqlite"
        st = self._backend.statements
        rowcount = 0
        with self._engine.connect() as conn:
            if lazy:  # outside the transaction: SQLite refuses it inside
                conn.connection.driver_connection.execute("PRAGMA synchronous=NORMAL")
            try:
                with conn.begin():
                    if flow_uuid:
                        self._check_fence(conn, flow_uuid)
                    for name, group in itertools.groupby(batch, key=lambda op: op[0]):
                        rows = [params for _, params in group]  # several: one executemany
                        rowcount = conn.execute(getattr(st, name), rows if len(rows) > 1 else rows[0]).rowcount
            finally:
                if lazy:
                    conn.connection.driver_connection.execute("PRAGMA synchronous=FULL")
        return rowcount

    def _check_fence(self, conn: sa.Connection, flow_uuid: str) -> None:
        """Inside a write transaction: refuse if the operation was taken over.

        The share lock makes a concurrent take-over wait for this transaction.
        """
        epoch = self._memory.fences.get(flow_uuid)
        if epoch is None:
            return
        current = conn.execute(self._backend.statements.epoch_is_current, {"f_op": flow_uuid, "f_epoch": epoch}).first()
        if current is None:
            raise Fenced(flow_uuid, epoch)

    def _transition(self, memo: _AtomMemo, ad: tf_models.AtomDetail) -> tuple[int, dict[str, Any] | None]:
        """The attempt count after this write, and the flow-log row it needs."""
        if ad.state == memo.state:
            return memo.attempts, None
        attempts = memo.attempts + 1 if ad.state == states.RUNNING else memo.attempts
        return attempts, log_row(memo.flow_uuid, ad, max(attempts, 1), self._memory.fences.get(memo.flow_uuid))

    def _update_atom_details_slowly(self, atom_detail: tf_models.AtomDetail) -> tf_models.AtomDetail:
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
                    runs = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(FLOW_LOG)
                        .where(FLOW_LOG.c.atom_uuid == existing.uuid, FLOW_LOG.c.state == states.RUNNING)
                    ).scalar_one()
                    attempt = runs + 1 if existing.state == states.RUNNING else max(runs, 1)
                    flow_uuid = row._mapping["parent_uuid"]
                    self._check_fence(conn, flow_uuid)
                    log = log_row(flow_uuid, existing, attempt, self._memory.fences.get(flow_uuid))
                    if log is not None:
                        conn.execute(sa.insert(FLOW_LOG).values(log))
            return existing
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}")
