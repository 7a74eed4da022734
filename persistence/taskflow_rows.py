"""The rows computeflow's taskflow backend writes, and the statements that write them.

`Statements` holds the hot path's SQL, built once per backend, and turns
taskflow's logbooks, flows and atoms into the `pg_batch.Op`s the backend
sends; `log_row` is the `flow_log` row of an atom's new state, with
`summarize` and `failure_line` for its result and error. Conversions only:
what is written when, and under which fence, is `taskflow_backend`'s job.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from taskflow import states
from taskflow.persistence import models as tf_models

from persistence.models import FlowLogEntry, Operation, utcnow
from persistence.pg_batch import Op

RESULT_SUMMARY_LIMIT = 300
INTERNAL_PREFIX = "_TaskFlow_"
_PROGRESS_KEYS = frozenset({"progress", "progress_details"})
FLOW_LOG: sa.Table = FlowLogEntry.__table__  # type: ignore[assignment]  # declared models map Tables
_OPS = Operation.__table__


def summarize(value: object, limit: int = RESULT_SUMMARY_LIMIT) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_line(failure: Any) -> str:  # a taskflow Failure
    """`Type: message` of a taskflow Failure (iterating one yields its type names)."""
    return f"{next(iter(failure), 'Error').rsplit('.', 1)[-1]}: {failure.exception_str}"


def significant_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without progress bookkeeping: what is worth a write.

    `meta` is always copied: taskflow updates an atom's meta in place, and a
    remembered row that shared that dict would silently change with it.
    """
    meta = row.get("meta") or {}
    return dict(row, meta={k: v for k, v in meta.items() if k not in _PROGRESS_KEYS})


class Statements:
    """The hot path's statements, built once: constructing a Core statement per
    write (and computing its cache key) cost more than executing it."""

    ATOM_COLUMNS = (
        "failure",
        "revert_failure",
        "meta",
        "name",
        "results",
        "revert_results",
        "state",
        "version",
        "intention",
    )
    NEW_ATOM_COLUMNS = ("uuid", "parent_uuid", "atom_type", "created_at", *ATOM_COLUMNS)
    LOG_COLUMNS = (
        "flow_detail_uuid",
        "atom_uuid",
        "step",
        "state",
        "attempt",
        "at",
        "result",
        "error",
        "traceback",
        "epoch",
    )

    #: Statements of every step transition, prepared once per connection (PostgreSQL).
    PER_STEP = ("update_atom", "insert_log", "update_flow")
    NEW_FLOW_COLUMNS = ("uuid", "parent_uuid", "name", "state", "meta", "created_at")
    NEW_BOOK_COLUMNS = ("uuid", "name", "meta", "created_at", "updated_at")

    def __init__(self, tables: Any) -> None:  # taskflow's tables namespace
        atoms, flows = tables.atomdetails, tables.flowdetails
        self.insert_book = sa.insert(tables.logbooks).inline()  # inline: no RETURNING
        self.insert_flow = sa.insert(flows).inline()
        self.update_atom = (
            sa.update(atoms)
            .where(atoms.c.uuid == sa.bindparam("a_uuid"))
            .values(
                {"updated_at": sa.bindparam("a_updated_at"), **{c: sa.bindparam(f"a_{c}") for c in self.ATOM_COLUMNS}}
            )
        )
        self.insert_atom = sa.insert(atoms).inline()
        self.insert_log = sa.insert(FLOW_LOG).inline().values({c: sa.bindparam(f"l_{c}") for c in self.LOG_COLUMNS})
        self.update_flow = (
            sa.update(flows)
            .where(flows.c.uuid == sa.bindparam("f_uuid"))
            .values(
                state=sa.bindparam("f_state"),
                meta=sa.bindparam("f_meta"),
                name=sa.bindparam("f_name"),
                updated_at=sa.bindparam("f_updated_at"),
            )
        )
        # Inside a write transaction (SQLite, MariaDB): the operation's epoch,
        # read under a share lock so that a concurrent take-over waits for the
        # transaction (PostgreSQL: `computeflow_assert_epoch`, migration 0006).
        self.epoch_is_current = (
            sa.select(_OPS.c.id)
            .where(_OPS.c.id == sa.bindparam("f_op"), _OPS.c.epoch == sa.bindparam("f_epoch"))
            .with_for_update(read=True)
        )

    def for_batches(self) -> dict[str, tuple[sa.sql.ClauseElement, list[str] | None]]:
        """What `pg_batch.BatchRenderer` compiles: each write statement and,
        for the plain INSERT, the columns it binds."""
        return {
            "insert_book": (self.insert_book, list(self.NEW_BOOK_COLUMNS)),
            "insert_flow": (self.insert_flow, list(self.NEW_FLOW_COLUMNS)),
            "update_atom": (self.update_atom, None),
            "insert_atom": (self.insert_atom, list(self.NEW_ATOM_COLUMNS)),
            "insert_log": (self.insert_log, None),
            "update_flow": (self.update_flow, None),
        }

    @classmethod
    def update_atom_op(cls, row: dict[str, Any]) -> Op:
        return "update_atom", {
            "a_uuid": row["uuid"],
            "a_updated_at": utcnow(),
            **{f"a_{c}": row.get(c) for c in cls.ATOM_COLUMNS},
        }

    @classmethod
    def insert_atom_op(cls, flow_uuid: str, ad: tf_models.AtomDetail) -> Op:
        row = dict(ad.to_dict(), parent_uuid=flow_uuid, atom_type=tf_models.atom_detail_type(ad), created_at=utcnow())
        return "insert_atom", {c: row.get(c) for c in cls.NEW_ATOM_COLUMNS}

    @classmethod
    def insert_book_ops(cls, book: tf_models.LogBook) -> list[Op]:
        """A new logbook with its flows and their atoms."""
        row = dict(book.to_dict(), created_at=book.created_at or utcnow())
        ops: list[Op] = [("insert_book", {c: row.get(c) for c in cls.NEW_BOOK_COLUMNS})]
        for fd in book:
            row = dict(fd.to_dict(), parent_uuid=book.uuid, created_at=utcnow())
            ops.append(("insert_flow", {c: row.get(c) for c in cls.NEW_FLOW_COLUMNS}))
        for fd in book:  # after every flow: consecutive atom rows make one INSERT
            ops.extend(cls.insert_atom_op(fd.uuid, ad) for ad in fd)
        return ops

    @classmethod
    def insert_log_op(cls, log: dict[str, Any]) -> Op:
        return "insert_log", {f"l_{c}": log.get(c) for c in cls.LOG_COLUMNS}

    @staticmethod
    def update_flow_op(fd: tf_models.FlowDetail) -> Op:
        return "update_flow", {
            "f_uuid": fd.uuid,
            "f_state": fd.state,
            "f_meta": fd.meta,
            "f_name": fd.name,
            "f_updated_at": utcnow(),
        }


def log_row(flow_uuid: str, ad: tf_models.AtomDetail, attempt: int, epoch: int | None = None) -> dict[str, Any] | None:
    """The flow_log row for an atom's new state (None for taskflow's injector)."""
    if ad.name.startswith(INTERNAL_PREFIX):
        return None  # taskflow's own injector atom holds the store, not a step
    state = ad.state or states.PENDING
    failure = ad.revert_failure if state == states.REVERT_FAILURE else ad.failure
    error = traceback = result = None
    if state in (states.FAILURE, states.REVERT_FAILURE) and failure is not None:
        error = failure_line(failure)
        traceback = failure.traceback_str
    elif state == states.SUCCESS:
        result = summarize(ad.results)
    return dict(
        flow_detail_uuid=flow_uuid,
        atom_uuid=ad.uuid,
        step=ad.name,
        state=state,
        attempt=attempt,
        at=utcnow(),
        result=result,
        error=error,
        traceback=traceback,
        epoch=epoch,
    )
