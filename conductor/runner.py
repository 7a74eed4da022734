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
from sqlalchemy.orm import Session
from taskflow import engines, exceptions as tf_exc, states
from taskflow.persistence import models as tf_models
from taskflow.types import notifier

from conductor.host_limits import HostLimits, SlotGate
from flows import catalog, runtime
from flows.errors import FlowVersionGone
from flows.runtime import Runtime
from flows.steps import cancellation
from persistence import host_slots, instances, operations
from persistence.models import Operation
from persistence.session import connection_lost
from persistence.taskflow_backend import Backend, Fenced
from persistence.taskflow_rows import failure_line

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """A persisted transition, as live progress."""

    operation_id: str
    step: str
    state: str
    error: str | None = None


EventSink = Callable[[StepEvent], None]
#: Asked in a run's first transaction, with the operation read there (None: no
#: such operation): the owners the run may take over from; raises to not run it.
Admit = Callable[[Session, Operation | None], tuple[str, ...]]


class NotOwner(Exception):
    def __init__(self, op_id: str) -> None:
        super().__init__(f"operation {op_id} is owned by a live conductor (or already finished)")


class WaitingForHostSlot(NotOwner):
    """Not run now: a per-host limit is reached (conductor/host_limits.py). The
    operation keeps its place in line; a later run of it proceeds in turn."""

    def __init__(self, op_id: str, waits: list[host_slots.Wait]) -> None:
        Exception.__init__(self, f"operation {op_id} waits for a host slot: " + "; ".join(str(w) for w in waits))
        self.op_id, self.waits = op_id, waits


def _outage(e: BaseException) -> bool:
    """The database was unreachable (alone, or among the failures of parallel steps)."""
    if isinstance(e, tf_exc.WrappedFailure):
        return any(f.exception is not None and connection_lost(f.exception) for f in e)
    return connection_lost(e)


class LostOwnership(Exception):
    """Another conductor took the operation over while this one ran it (fencing)."""

    def __init__(self, op_id: str, epoch: int) -> None:
        super().__init__(f"operation {op_id}: lost ownership (epoch {epoch} superseded); its new owner finishes it")
        self.op_id, self.epoch = op_id, epoch


class LeaseKeeper:
    """One thread renewing the leases of every operation this process runs.

    In the same transaction it reads the cancel requests of those operations
    and flags them in flows.steps.cancellation, where each step looks before
    it executes: cancelling costs no read per step.
    """

    def __init__(self, rt: Runtime, owner: str, lease_seconds: float) -> None:
        self.rt, self.owner, self.lease_seconds = rt, owner, lease_seconds
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def track(self, op: Operation, epoch: int, no_return_step: str | None = None) -> None:
        """Renew `op`'s lease from now on. `op` as read in the transaction that
        took it at `epoch` (for fenced retry rows): a cancel requested before
        then stops it at its first step, one after is read at the next renewal."""
        cancellation.enter(op.id, self.owner, epoch, op.cancel_requested_by, no_return_step)
        with self._lock:
            self._running.add(op.id)

    def untrack(self, op_id: str) -> None:
        with self._lock:
            self._running.discard(op_id)
        cancellation.leave(op_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                ids = list(self._running)
            try:
                with self.rt.db.session() as s:
                    operations.renew_leases(s, self.owner, ids, self.lease_seconds)
                    ours = operations.still_owned(s, self.owner, ids)
                cancels = {op_id: by for op_id, by in ours.items() if by is not None}
                for op_id in set(ids) - ours.keys():
                    with self._lock:
                        running = op_id in self._running
                    if running and cancellation.lose(op_id):
                        LOG.warning(
                            "operation %s was taken from this process (terminate?); "
                            "a step waiting for the hypervisor gives up",
                            op_id,
                        )
                for op_id, by in cancels.items():
                    if cancellation.request(op_id, by):
                        LOG.info("operation %s: cancel requested by %s; stopping at the next step", op_id, by)
            except Exception:  # a lost database must not kill the keeper
                LOG.exception("renewing leases failed; will retry")


class Runner:
    def __init__(
        self,
        rt: Runtime,
        owner: str,
        *,
        lease_seconds: float,
        executor: futures.Executor,
        leases: LeaseKeeper,
        slots: SlotGate | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.rt = rt
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.executor = executor
        self.leases = leases
        #: Share one per process: its write pools are the process's flow-write
        #: connections, which an idle conductor closes (Conductor.release_idle_connections).
        self.backend = backend or Backend(rt.db.engine)
        #: Per-host limits; share one per process so that a release wakes its waiters.
        self.slots = slots or SlotGate(HostLimits.from_conf(rt.conf), lease_seconds)

    def run(
        self,
        op_id: str,
        *,
        dead_owners: tuple[str, ...] = (),
        on_event: EventSink | None = None,
        admit: Admit | None = None,
    ) -> Operation:
        """Run (or resume) an operation; returns its final record.
        WaitingForHostSlot when a per-host limit keeps it waiting in line.
        `admit` decides, on the row the run reads anyway, whom it may take
        over from or that it must not run (the conductor service's checks)."""
        epoch, op, limited, fresh = self._take(op_id, dead_owners, admit)
        kind = catalog.CATALOG.get(op.kind)
        self.leases.track(op, epoch, kind.no_return_step if kind else None)
        self.backend.fence(op_id, epoch)
        ended = False  # its outcome's transaction left its slots (Runner._finish)
        try:
            with runtime.active(self.rt):  # this conductor's, in every step thread
                final = self._run_owned(op, epoch, on_event, fresh)
            ended = True
            return final
        except Exception as e:
            if _fenced(e) is None:
                raise
            LOG.warning("operation %s: taken over by another conductor; stopping", op_id)
            raise LostOwnership(op_id, epoch) from e
        finally:
            self.backend.unfence(op_id)
            self.leases.untrack(op_id)
            if limited and ended:
                self.slots.announce_release()
            elif limited:
                self._release_slots(op_id)

    def _take(
        self, op_id: str, dead_owners: tuple[str, ...], admit: Admit | None = None
    ) -> tuple[int, Operation, bool, bool]:
        """Ownership and, in the same transaction, the host slots the operation
        needs (no one sees it owned without its slots, or holding slots
        unowned) and, for a first run, its RUNNING state. Returns the epoch,
        the operation, whether it needs slots, and whether it was PENDING when
        read (it never ran, so it has no flow detail yet)."""
        ask = host_slots.Ask()
        epoch = None
        fresh = False
        try:
            with self.rt.db.session() as s:
                op = operations.get(s, op_id)
                if admit is not None:
                    dead_owners = admit(s, op)
                if op is not None:
                    ask = self.slots.request(s, op)
                    fresh = op.state == operations.PENDING
                if not ask.waits:  # else commit only the place in line
                    # A first run starts here: RUNNING in the same statement; `op` is refreshed by it.
                    epoch = operations.take_ownership(s, op_id, self.owner, self.lease_seconds, dead_owners, start=True)
                    if epoch is not None:
                        self.slots.take(s, op, ask)
        except host_slots.SlotRace as race:
            ask.waits = [race.wait]
        if ask.waits:
            raise WaitingForHostSlot(op_id, ask.waits)
        if epoch is None:
            raise NotOwner(op_id)
        return epoch, op, bool(ask), fresh

    def _release_slots(self, op_id: str) -> None:
        try:
            self.slots.release(self.rt.db, op_id, self.owner)
        except Exception as e:  # noqa: BLE001 - a lost database: the lease lapses, the slot is reclaimed
            LOG.warning(
                "operation %s: releasing its host slots failed (%s); they are reclaimed once its lease lapses", op_id, e
            )

    def _run_owned(self, op: Operation, epoch: int, on_event: EventSink | None, fresh: bool = False) -> Operation:
        kind = catalog.get(op.kind)
        if op.flow_version != kind.version:
            err = FlowVersionGone(op.id, op.kind, op.flow_version, kind.version)
            LOG.error("%s", err)
            self._finish(op.id, epoch, operations.FAILED, str(err))
            return self._reload(op.id)

        flow_detail, book = self._flow_detail(op, kind, fresh=fresh)
        if flow_detail.state in (states.SUCCESS, states.REVERTED, states.FAILURE, states.REVERT_FAILURE):
            # Ended before the outcome was recorded (crash in between). Running it
            # again would reset it and execute every step anew: record instead.
            LOG.info("operation %s: flow already ended %s; recording it", op.id, flow_detail.state)
            self._record_outcome(op.id, epoch, flow_detail.state, op.error)
            return self._reload(op.id)

        flow = engines.flow_from_detail(flow_detail)
        engine = engines.load(
            flow,
            flow_detail=flow_detail,
            book=book,
            backend=self.backend,
            store=self._store(op),
            engine="parallel",
            executor=self.executor,
            defer_reverts=True,
        )
        engine.notifier.register(notifier.Notifier.ANY, self._flow_listener(op.id, epoch))
        watch = RevertWatch(self, op, epoch, _retried_names(flow))
        engine.atom_notifier.register(notifier.Notifier.ANY, watch)
        if on_event is not None:
            engine.atom_notifier.register(notifier.Notifier.ANY, _atom_listener(op.id, on_event))
        self.backend.log_interrupted_atoms(flow_detail)
        error = None
        try:
            engine.run()
        except tf_exc.StorageFailure:
            raise  # the database is gone: leave the operation for a resume
        except Exception as e:  # the flow failed; what matters is where it ended
            if _fenced(e) is not None:
                raise
            if _outage(e) and engine.storage.get_flow_state() not in (states.SUCCESS, states.REVERTED):
                # The engine's own write met an outage (not wrapped as a StorageFailure)
                # and the flow did not end: paused and resumed later, never FAILED.
                raise
            error = _describe(e)
            LOG.info("operation %s failed: %s", op.id, error)
        flow_state = engine.storage.get_flow_state()
        if flow_state not in (states.SUCCESS, states.REVERTED):
            error = _needs_repair_error(watch.cause or op.error, error)
        # The flow has ended: stop renewing the lease before recording the
        # outcome, which clears the owner (the keeper took that for a takeover).
        self.leases.untrack(op.id)
        self._record_outcome(op.id, epoch, flow_state, error)
        return self._reload(op.id)

    def _store(self, op: Operation) -> dict:
        return {"operation_id": op.id, **op.parameters}

    def _flow_detail(self, op: Operation, kind: catalog.OperationKind, *, fresh: bool = False):
        """The flow detail of this operation, created atomically with its factory.

        fresh: the operation never ran, so it is created without looking for
        it first (one round trip fewer); one found after all is the one used.
        """
        conn = self.backend.get_connection()
        if not fresh:
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
        if conn.add_logbook(book):
            return flow_detail, book
        book = conn.get_logbook(op.id)  # it existed: another run of it created it
        return book.find(op.id), book

    def _flow_listener(self, op_id: str, epoch: int):
        """Flow-level transitions. Nothing to record here (taskflow 6.5 announces
        no REVERTING: RevertWatch marks it); the conductor service hooks in to
        register each engine so it can suspend it (service.py)."""

        def on_flow_state(state: str, details: dict) -> None:
            return None

        return on_flow_state

    def _record_outcome(self, op_id: str, epoch: int, flow_state: str, error: str | None) -> None:
        if flow_state == states.SUCCESS:
            self._finish(op_id, epoch, operations.SUCCEEDED, None)
        elif flow_state == states.REVERTED:
            self._finish(op_id, epoch, operations.REVERTED, error or "reverted")
        else:
            self._finish(op_id, epoch, operations.FAILED, error or f"flow ended {flow_state}; needs an operator")

    def _finish(self, op_id: str, epoch: int, state: str, error: str | None) -> None:
        with self.rt.db.session() as s:
            if not operations.mark(s, op_id, state, owner=self.owner, epoch=epoch, error=error):
                raise Fenced(op_id, epoch)  # taken over: the new owner records the outcome
            # Its host slots go with its outcome: nobody sees it ended and still
            # holding them (a waiter woken by the outcome finds the slot free).
            host_slots.release(s, op_id, self.owner)
            self.rt.secrets.purge(s, op_id)
            if state == operations.FAILED:
                # It keeps its hold (nothing else may touch what the failed revert
                # left), and no longer looks busy with an operation in progress.
                instances.show_failed(s, op_id)

    def mark_reverting(self, op_id: str, epoch: int, cause: str | None) -> None:
        with self.rt.db.session() as s:
            operations.mark_reverting(s, op_id, self.owner, epoch, cause)

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


class RevertWatch:
    """Marks the operation REVERTING, with the failure that caused it, when
    its flow starts undoing steps (taskflow 6.5 announces no flow-level
    REVERTING). A step reverted by a retry controller that will run it again
    is not the operation reverting; the controller giving up is."""

    def __init__(self, runner: Runner, op: Operation, epoch: int, retried: frozenset[str]) -> None:
        self.runner, self.op_id, self.epoch, self.retried = runner, op.id, epoch, retried
        self.marked = op.state == operations.REVERTING
        #: The latest step failure this run saw: what the revert is about.
        self.cause: str | None = None

    def __call__(self, state: str, details: dict) -> None:
        name = details.get("task_name") or details.get("retry_name")
        if state == states.FAILURE and details.get("task_name"):
            result = details.get("result")
            if hasattr(result, "exception_str"):
                self.cause = f"{name}: {failure_line(result)}"
        elif state == states.REVERTING and not self.marked and name not in self.retried:
            self.marked = True
            self.runner.mark_reverting(self.op_id, self.epoch, self.cause)


def _retried_names(flow) -> frozenset[str]:
    """Names of the atoms inside subflows run by a retry controller."""
    names: set[str] = set()

    def walk(node, under_retry: bool) -> None:
        for child in node:
            if hasattr(child, "iter_links"):  # a subflow
                walk(child, under_retry or getattr(child, "retry", None) is not None)
            elif under_retry:
                names.add(child.name)

    walk(flow, getattr(flow, "retry", None) is not None)
    return frozenset(names)


def _needs_repair_error(cause: str | None, revert_error: str | None) -> str:
    """Both failures of an operation whose revert failed: why it reverted, then why the
    revert stopped (taskflow reports only the latter)."""
    revert_error = revert_error or "the revert did not finish"
    if cause and REVERT_FAILED_MARK in cause:  # a retried revert failed again
        cause = cause.split(REVERT_FAILED_MARK)[0].rstrip("; ") or None
    if cause and cause != revert_error:
        return f"{cause}; {REVERT_FAILED_MARK} {revert_error}"
    return f"{REVERT_FAILED_MARK} {revert_error}"


#: Separates an operation's cause from its revert's failure in its error text.
REVERT_FAILED_MARK = "then the revert failed:"


def _fenced(e: BaseException) -> Fenced | None:
    """The Fenced error behind a (possibly wrapped) engine failure, if any."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, Fenced):
            return e
        if isinstance(e, tf_exc.WrappedFailure):  # several atoms failed at once
            return next((f.exception for f in e if f.check(Fenced)), None)
        e = getattr(e, "cause", None) or e.__cause__
        seen += 1
    return None


def _describe(e: BaseException) -> str:
    """One line: the causes of a (possibly wrapped) flow failure."""
    if isinstance(e, tf_exc.WrappedFailure):
        return "; ".join(failure_line(f) for f in e)
    return f"{type(e).__name__}: {e}"
