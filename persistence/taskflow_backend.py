"""computeflow's taskflow persistence backend.

It is taskflow's SQLAlchemy backend with two changes:

* One set of Table objects per backend. The stock `Connection.__init__` builds
  a new MetaData and Tables on every `get_connection()`, which taskflow calls
  for every save; that costs time and ~5 MB per flow that is never returned.
* Every atom or flow state transition also appends a `flow_log` row in the
  *same transaction* as taskflow's own update, so the operator's log can never
  disagree with the state a resumed flow starts from.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from taskflow import exceptions as tf_exc
from taskflow.persistence import models as tf_models
from taskflow.persistence.backends import impl_sqlalchemy as stock
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from persistence.models import FlowLogEntry, utcnow

RESULT_SUMMARY_LIMIT = 300
_INTERNAL_PREFIX = "_TaskFlow_"
_LOG = FlowLogEntry.__table__


def summarize(value: object, limit: int = RESULT_SUMMARY_LIMIT) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_line(failure) -> str:
    """`Type: message` of a taskflow Failure (iterating one yields its type names)."""
    return f"{next(iter(failure), 'Error').rsplit('.', 1)[-1]}: {failure.exception_str}"


class Backend(stock.SQLAlchemyBackend):
    """Backend bound to an existing engine, sharing one table set."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__({"connection": str(engine.url)}, engine=engine)
        self.tables = tf_tables.fetch(sa.MetaData())
        self.converter = stock._Alchemist(self.tables)

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

    def upgrade(self) -> None:
        """Schema is owned by computeflow's migrations (persistence.schema)."""

    def update_atom_details(self, atom_detail):
        atoms = self._tables.atomdetails
        try:
            with self._engine.begin() as conn:
                row = conn.execute(
                    sa.select(atoms).where(atoms.c.uuid == atom_detail.uuid)
                ).first()
                if row is None:
                    raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
                existing = self._converter.convert_atom_detail(row._mapping)
                before = existing.state
                self._update_atom_details(conn, atom_detail, existing)
                if existing.state != before:
                    self._log_atom(conn, row._mapping["parent_uuid"], existing)
            return existing
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating atom details {atom_detail.uuid}"
            )

    def update_flow_details(self, flow_detail):
        flows = self._tables.flowdetails
        try:
            with self._engine.begin() as conn:
                row = conn.execute(
                    sa.select(flows).where(flows.c.uuid == flow_detail.uuid)
                ).first()
                if row is None:
                    raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
                existing = self._converter.convert_flow_detail(row._mapping)
                self._converter.populate_flow_detail(conn, existing)
                before = existing.state
                atom_states = {ad.uuid: ad.state for ad in existing}
                self._update_flow_details(conn, flow_detail, existing)
                for ad in existing:
                    if ad.state != atom_states.get(ad.uuid):
                        self._log_atom(conn, existing.uuid, ad)
                if existing.state != before and existing.state:
                    conn.execute(
                        sa.insert(_LOG).values(
                            flow_detail_uuid=existing.uuid, atom_uuid=existing.uuid,
                            step="(flow)", state=existing.state, attempt=0, at=utcnow(),
                        )
                    )
            return existing
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(
                tf_exc.StorageFailure, f"Failed updating flow details {flow_detail.uuid}"
            )

    @staticmethod
    def _log_atom(conn: sa.Connection, flow_uuid: str, ad: tf_models.AtomDetail) -> None:
        if ad.name.startswith(_INTERNAL_PREFIX):
            return  # taskflow's own injector atom holds the store, not a step
        state = ad.state or "PENDING"
        runs = conn.execute(
            sa.select(sa.func.count()).select_from(_LOG).where(
                _LOG.c.atom_uuid == ad.uuid, _LOG.c.state == "RUNNING"
            )
        ).scalar_one()
        attempt = runs + 1 if state == "RUNNING" else max(runs, 1)
        failure = ad.revert_failure if state == "REVERT_FAILURE" else ad.failure
        error = traceback = result = None
        if state in ("FAILURE", "REVERT_FAILURE") and failure is not None:
            error = failure_line(failure)
            traceback = failure.traceback_str
        elif state == "SUCCESS":
            result = summarize(ad.results)
        conn.execute(
            sa.insert(_LOG).values(
                flow_detail_uuid=flow_uuid, atom_uuid=ad.uuid, step=ad.name,
                state=state, attempt=attempt, at=utcnow(), result=result,
                error=error, traceback=traceback,
            )
        )
