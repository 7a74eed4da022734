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
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from taskflow import exceptions as tf_exc, states
from taskflow.persistence import models as tf_models
from taskflow.persistence.backends import impl_sqlalchemy as stock
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from persistence.models import FlowLogEntry, utcnow

RESULT_SUMMARY_LIMIT = 300
_INTERNAL_PREFIX = "_TaskFlow_"
_PROGRESS_KEYS = frozenset({"progress", "progress_details"})
_FLOW_ENDED = frozenset({states.SUCCESS, states.REVERTED, states.FAILURE, states.REVERT_FAILURE})
_LOG = FlowLogEntry.__table__


def summarize(value: object, limit: int = RESULT_SUMMARY_LIMIT) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_line(failure) -> str:
    """`Type: message` of a taskflow Failure (iterating one yields its type names)."""
    return f"{next(iter(failure), 'Error').rsplit('.', 1)[-1]}: {failure.exception_str}"


def _significant(row: dict) -> dict:
    """The row without progress bookkeeping: what is worth a write."""
    meta = row.get("meta") or {}
    if _PROGRESS_KEYS & meta.keys():
        row = dict(row, meta={k: v for k, v in meta.items() if k not in _PROGRESS_KEYS})
    return row


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


class _Statements:
    """The hot path's statements, built once: constructing a Core statement per
    write (and computing its cache key) cost more than executing it."""

    ATOM_COLUMNS = ("failure", "revert_failure", "meta", "name", "results", "revert_results",
                    "state", "version", "intention")
    LOG_COLUMNS = ("flow_detail_uuid", "atom_uuid", "step", "state", "attempt", "at", "result",
                   "error", "traceback")

    def __init__(self, atoms: sa.Table) -> None:
        self.update_atom = (
            sa.update(atoms).where(atoms.c.uuid == sa.bindparam("a_uuid"))
            .values({c: sa.bindparam(f"a_{c}") for c in self.ATOM_COLUMNS}))
        self.insert_log = sa.insert(_LOG).values({c: sa.bindparam(f"l_{c}") for c in self.LOG_COLUMNS})
        self.update_atom_and_log = self.insert_log.add_cte(self.update_atom.cte("atom_update"))

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
        # writes go through an autocommit view of the same pool.
        self.single_statement_writes = engine.dialect.name == "postgresql"
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statements = _Statements(self.tables.atomdetails)

    def get_connection(self) -> "Connection":
        return Connection(self, upgrade_lock=self._upgrade_lock)


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
                with self._engine.begin() as conn:
                    self._write_atom(conn, memo, atom_detail)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}")
        return atom_detail

    def update_flow_details(self, flow_detail):
        flows = self._tables.flowdetails
        try:
            with self._engine.begin() as conn:
                changed = conn.execute(
                    sa.update(flows).where(flows.c.uuid == flow_detail.uuid).values(
                        state=flow_detail.state, meta=flow_detail.meta, name=flow_detail.name,
                        updated_at=utcnow())
                ).rowcount
                if not changed:
                    raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
                previous = self._memory.flow_states.get(flow_detail.uuid)
                for ad in flow_detail:
                    memo = self._memory.atoms.get(ad.uuid)
                    if memo is None:
                        self._insert_atom_details(conn, ad, flow_detail.uuid)
                        self._memory.remember(flow_detail.uuid, ad)
                    else:
                        self._write_atom(conn, memo, ad)
                if flow_detail.state and flow_detail.state != previous:
                    conn.execute(sa.insert(_LOG).values(
                        flow_detail_uuid=flow_detail.uuid, atom_uuid=flow_detail.uuid,
                        step="(flow)", state=flow_detail.state, attempt=0, at=utcnow()))
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating flow details {flow_detail.uuid}")
        if flow_detail.state in _FLOW_ENDED:
            self._memory.forget_flow(flow_detail.uuid)
        else:
            self._memory.flow_states[flow_detail.uuid] = flow_detail.state
        return flow_detail

    def _write_atom(self, conn: sa.Connection, memo: _AtomMemo, ad: tf_models.AtomDetail) -> None:
        row = ad.to_dict()
        significant = _significant(row)
        if significant == memo.written:
            return  # nothing but progress changed
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
        with self._backend.autocommit.connect() as conn:
            if log is None:
                conn.execute(st.update_atom, st.atom_params(row))
            else:
                conn.execute(st.update_atom_and_log, st.atom_params(row) | st.log_params(log))
        memo.state, memo.attempts, memo.written = ad.state, attempts, _significant(row)

    @staticmethod
    def _transition(memo: _AtomMemo, ad: tf_models.AtomDetail) -> tuple[int, dict | None]:
        """The attempt count after this write, and the flow-log row it needs."""
        if ad.state == memo.state:
            return memo.attempts, None
        attempts = memo.attempts + 1 if ad.state == states.RUNNING else memo.attempts
        return attempts, _log_row(memo.flow_uuid, ad, max(attempts, 1))

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
                    log = _log_row(row._mapping["parent_uuid"], existing, attempt)
                    if log is not None:
                        conn.execute(sa.insert(_LOG).values(log))
            return existing
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}")



def _log_row(flow_uuid: str, ad: tf_models.AtomDetail, attempt: int) -> dict | None:
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
                attempt=attempt, at=utcnow(), result=result, error=error, traceback=traceback)
