"""Run one operation's flow to its end, from scratch or from where it stopped.

The same code path serves a fresh submission and a resume after a crash:
take ownership, load (or create) the flow detail whose uuid is the operation
id, refuse flows whose version is gone, never re-run a flow that already
ended, run it with deferred reverts, and record the outcome.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from concurrent import futures
from taskflow import engines, exceptions as tf_exc, states
from taskflow.persistence import models as tf_models
from taskflow.types import notifier

from flows import catalog
from flows.errors import FlowVersionGone
from flows.runtime import Runtime
from persistence import operations
from persistence.models import Operation
from persistence.taskflow_backend import Backend, failure_line

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """A persisted transition, as live progress."""

    operation_id: str
    step: str
    state: str
    error: str | None = None


EventSink = Callable[[StepEvent], None]


class NotOwner(Exception):
    def __init__(self, op_id: str) -> None:
        super().__init__(f"operation {op_id} is owned by a live conductor (or already finished)")


class LeaseKeeper:
    """One thread renewing the leases of every operation this process runs."""

    def __init__(self, rt: Runtime, owner: str, lease_seconds: float) -> None:
        self.rt, self.owner, self.lease_seconds = rt, owner, lease_seconds
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def track(self, op_id: str) -> None:
        with self._lock:
            self._running.add(op_id)

    def untrack(self, op_id: str) -> None:
        with self._lock:
            self._running.discard(op_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                ids = list(self._running)
            try:
                with self.rt.db.session() as s:
                    operations.renew_leases(s, self.owner, ids, self.lease_seconds)
            except Exception:  # a lost database must not kill the keeper
                LOG.exception("renewing leases failed; will retry")


class Runner:
    def __init__(self, rt: Runtime, owner: str, *, lease_seconds: float,
                 executor: futures.Executor, leases: LeaseKeeper) -> None:
        self.rt = rt
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.executor = executor
        self.leases = leases
        self.backend = Backend(rt.db.engine)

    def run(self, op_id: str, *, dead_owners: tuple[str, ...] = (),
            on_event: EventSink | None = None) -> Operation:
        """Run (or resume) an operation; returns its final record."""
        with self.rt.db.session() as s:
            if not operations.take_ownership(s, op_id, self.owner, self.lease_seconds, dead_owners):
                raise NotOwner(op_id)
            op = operations.get(s, op_id)
        self.leases.track(op_id)
        try:
            return self._run_owned(op, on_event)
        finally:
            self.leases.untrack(op_id)

    def _run_owned(self, op: Operation, on_event: EventSink | None) -> Operation:
        kind = catalog.get(op.kind)
        if op.flow_version != kind.version:
            err = FlowVersionGone(op.id, op.kind, op.flow_version, kind.version)
            LOG.error("%s", err)
            self._finish(op.id, operations.FAILED, str(err))
            return self._reload(op.id)

        flow_detail, book = self._flow_detail(op, kind)
        if flow_detail.state in (states.SUCCESS, states.REVERTED, states.FAILURE, states.REVERT_FAILURE):
            # Ended before the outcome was recorded (crash in between). Running it
            # again would reset it and execute every step anew: record instead.
            LOG.info("operation %s: flow already ended %s; recording it", op.id, flow_detail.state)
            self._record_outcome(op.id, flow_detail.state, op.error)
            return self._reload(op.id)

        flow = engines.flow_from_detail(flow_detail)
        engine = engines.load(
            flow, flow_detail=flow_detail, book=book, backend=self.backend,
            store=self._store(op), engine="parallel", executor=self.executor,
            defer_reverts=True,
        )
        engine.notifier.register(notifier.Notifier.ANY, self._flow_listener(op.id))
        if on_event is not None:
            engine.atom_notifier.register(notifier.Notifier.ANY, _atom_listener(op.id, on_event))
        with self.rt.db.session() as s:
            if op.state == operations.PENDING:
                operations.mark(s, op.id, operations.RUNNING, owner=self.owner,
                                flow_detail_uuid=flow_detail.uuid)
        error = None
        try:
            engine.run()
        except tf_exc.StorageFailure:
            raise  # the database is gone: leave the operation for a resume
        except Exception as e:  # the flow failed; what matters is where it ended
            error = _describe(e)
            LOG.info("operation %s failed: %s", op.id, error)
        self._record_outcome(op.id, engine.storage.get_flow_state(), error)
        return self._reload(op.id)

    def _store(self, op: Operation) -> dict:
        return {"operation_id": op.id, **op.parameters}

    def _flow_detail(self, op: Operation, kind: catalog.OperationKind):
        """The flow detail of this operation, created atomically with its factory."""
        conn = self.backend.get_connection()
        try:
            book = conn.get_logbook(op.id)
            return book.find(op.id), book
        except tf_exc.NotFound:
            pass
        book = tf_models.LogBook(f"operation-{op.id}", uuid=op.id)
        flow_detail = tf_models.FlowDetail(op.kind, uuid=op.id)
        flow_detail.meta = {
            "factory": {"name": kind.factory, "args": [], "kwargs": op.parameters},
            "flow_version": kind.version,
        }
        book.add(flow_detail)
        conn.save_logbook(book)
        return flow_detail, book

    def _flow_listener(self, op_id: str):
        def on_flow_state(state: str, details: dict) -> None:
            if state == states.REVERTING:
                with self.rt.db.session() as s:
                    operations.mark(s, op_id, operations.REVERTING, owner=self.owner)
        return on_flow_state

    def _record_outcome(self, op_id: str, flow_state: str, error: str | None) -> None:
        if flow_state == states.SUCCESS:
            self._finish(op_id, operations.SUCCEEDED, None)
        elif flow_state == states.REVERTED:
            self._finish(op_id, operations.REVERTED, error or "reverted")
        else:
            self._finish(op_id, operations.FAILED,
                         error or f"flow ended {flow_state}; needs an operator")

    def _finish(self, op_id: str, state: str, error: str | None) -> None:
        with self.rt.db.session() as s:
            operations.mark(s, op_id, state, owner=self.owner, error=error)
            self.rt.secrets.purge(s, op_id)

    def _reload(self, op_id: str) -> Operation:
        with self.rt.db.session() as s:
            return operations.get(s, op_id)


def _atom_listener(op_id: str, sink: EventSink):
    def on_atom_state(state: str, details: dict) -> None:
        name = details.get("task_name") or details.get("retry_name") or "?"
        result = details.get("result")
        error = None
        if state in (states.FAILURE, states.REVERT_FAILURE) and hasattr(result, "exception_str"):
            error = result.exception_str
        sink(StepEvent(op_id, name, state, error))
    return on_atom_state


def _describe(e: BaseException) -> str:
    """One line: the causes of a (possibly wrapped) flow failure."""
    if isinstance(e, tf_exc.WrappedFailure):
        return "; ".join(failure_line(f) for f in e)
    return f"{type(e).__name__}: {e}"
