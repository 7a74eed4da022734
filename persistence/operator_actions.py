"""What is done to an operation besides running it: cancel, terminate, repair.

`request_cancel` (cancel at once, or ask the owner to stop at its next step
boundary), `seize` (`computeflow terminate`: take it from its owner, fencing
it), `reopen_for_revert` and `mark_reverted` (an operator's answers to a
FAILED operation); each refuses with `Refused` and records who did it in the
flow log. The policy (which kinds may be cancelled, when) is the conductor's:
conductor/cancel.py and conductor/repair.py. Apart from operations.py, which
keeps the operation's own life: creation, ownership, its runs' records.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session
from taskflow import states as _tf_states

from computeflow.states import VmState
from persistence import claims, host_slots, instances, notify
from persistence.errors import PersistenceError
from persistence.models import FLOW_STEP, TASKFLOW_TABLES, Claim, FlowLogEntry, Operation, Secret, utcnow
from persistence.operations import (
    ACTIVE_STATES,
    FAILED,
    FINAL_STATES,
    PENDING,
    REVERTED,
    REVERTING,
    forward_phase_started,
    get,
    listing,
    not_found,
)
from persistence.session import changed

#: flow_log rows recording what an operator did (step "(flow)": not a step move).
CANCEL_REQUESTED, REVERT_RETRIED, MARKED_REVERTED = "CANCEL_REQUESTED", "REVERT_RETRIED", "MARKED_REVERTED"
TERMINATED = "TERMINATED"


class Refused(PersistenceError):
    """A cancel or repair request that cannot be honoured, and why (one line)."""


@dataclass(frozen=True)
class CancelOutcome:
    op_id: str
    kind: str
    #: REVERTED when it was cancelled right away (pending, no live owner);
    #: otherwise its current state, its owner stopping it at the next step boundary.
    state: str
    owner: str | None

    @property
    def done(self) -> bool:
        return self.state == REVERTED


def request_cancel(
    s: Session,
    op_id: str,
    by: str = "api",
    *,
    dead_owners: tuple[str, ...] = (),
    forward_only: bool = False,
    no_return_step: str | None = None,
) -> CancelOutcome:
    """Cancel an operation: at once if it is pending and no live conductor
    owns it, else by recording the request for its owner's lease keeper.

    Refused (`Refused`) for an ended operation, for a `forward_only` one
    (destroy) that a conductor runs or is about to run, and for one whose
    `no_return_step` started. Which kinds are which is the catalogue's to
    say (conductor/cancel.py passes it); persistence imports no flows.
    """
    op = get(s, op_id)
    if op is None:
        raise Refused(not_found(s, op_id))
    if op.state in FINAL_STATES:
        raise Refused(f"operation {op.id} already ended {op.state}: nothing to cancel")
    if forward_only and op.state != PENDING:
        raise Refused(
            f"operation {op.id} ({op.kind}) is forward-only and already running: it "
            "cannot be cancelled and will finish (or stop in ERROR for an operator)"
        )
    if op.state != PENDING and forward_phase_started(s, op.id, no_return_step):
        raise Refused(
            f"operation {op.id} ({op.kind}) is past its point of no return (its "
            "forward-only phase started): it cannot be cancelled and will finish"
        )
    now = utcnow()
    if op.state == PENDING and _cancel_pending(s, op, by, now, dead_owners):
        return CancelOutcome(op.id, op.kind, REVERTED, None)
    if forward_only:
        raise Refused(
            f"operation {op.id} ({op.kind}) is forward-only and conductor {op.owner} "
            "is starting it: it cannot be cancelled"
        )
    recorded = (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op.id, Operation.state.in_(ACTIVE_STATES), Operation.cancel_requested_by.is_(None))
            .values(cancel_requested_by=by, cancel_requested_at=now),
        )
        == 1
    )
    s.refresh(op)
    if op.state in FINAL_STATES:
        raise Refused(f"operation {op.id} ended {op.state} meanwhile: nothing to cancel")
    if recorded:
        _annotate(s, op.id, CANCEL_REQUESTED, f"by {by}")
    return CancelOutcome(op.id, op.kind, op.state, op.owner)


def seize(s: Session, op_id: str, owner: str, lease_seconds: float, by: str) -> str | None:
    """Take an unfinished operation from its owner, alive or not (`computeflow
    terminate`): the epoch is bumped, so every later write of the former owner
    (a hung step that returns one day) is refused. Returns the former owner."""
    op = get(s, op_id)
    if op is None:
        raise Refused(not_found(s, op_id))
    if op.state in FINAL_STATES:
        raise Refused(f"operation {op.id} already ended {op.state}: nothing to terminate")
    former = op.owner
    if (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op.id, Operation.state.in_(ACTIVE_STATES))
            .values(
                owner=owner, epoch=Operation.epoch + 1, lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds)
            ),
        )
        != 1
    ):
        raise Refused(f"operation {op.id} ended meanwhile: nothing to terminate")
    _annotate(s, op.id, TERMINATED, f"by {by}; former owner {former or '-'} fenced")
    return former


def _cancel_pending(s: Session, op: Operation, by: str, now: dt.datetime, dead_owners: tuple[str, ...]) -> bool:
    """End a pending operation that no live conductor owns, without running a
    step: one conditional UPDATE (bumping the epoch fences a runner that had
    claimed it and stalled), then the hold and secrets it took at submission."""
    free = sa.or_(
        Operation.owner.is_(None),
        Operation.lease_expires_at < now,
        Operation.owner.in_(dead_owners) if dead_owners else sa.false(),
    )
    ended = (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op.id, Operation.state == PENDING, free)
            .values(
                state=REVERTED,
                error=f"cancelled by {by} before it ran",
                finished_at=now,
                owner=None,
                lease_expires_at=None,
                epoch=Operation.epoch + 1,
                cancel_requested_by=by,
                cancel_requested_at=now,
            ),
        )
        == 1
    )
    if not ended:
        return False
    notify.announce(s, notify.ENDED, op.id)
    if op.instance_uuid:
        params = op.parameters or {}
        restore = (
            {"vm_state": params["prior_vm_state"], "power_state": params.get("prior_power_state") or "nostate"}
            if params.get("prior_vm_state")
            else {"vm_state": VmState.ERROR}
        )  # a spawn: as reverted
        instances.release_hold(s, op.instance_uuid, op.id, task_state=None, **restore)
    s.execute(sa.delete(Secret).where(Secret.operation_id == op.id))
    host_slots.forget(s, op.id)  # it may have waited in line for a host slot
    _annotate(s, op.id, CANCEL_REQUESTED, f"by {by}; cancelled before it ran")
    return True


def needing_repair(s: Session, limit: int = 50) -> list[Operation]:
    """FAILED operations, newest first: each needs an operator (a revert failed)."""
    return listing(s, limit=limit, state=FAILED)


def failed_reverts(s: Session, op: Operation) -> list[str]:
    """Names of the steps of this operation whose revert failed."""
    ad = TASKFLOW_TABLES.atomdetails
    return list(
        s.scalars(
            sa.select(ad.c.name).where(
                ad.c.parent_uuid == (op.flow_detail_uuid or op.id), ad.c.state == _tf_states.REVERT_FAILURE
            )
        )
    )


def _failed_operation(s: Session, op_id: str, otherwise: str) -> Operation:
    """The operation, refused unless it is FAILED (`otherwise` says why that matters)."""
    op = get(s, op_id)
    if op is None:
        raise Refused(not_found(s, op_id))
    if op.state != FAILED:
        raise Refused(f"operation {op.id} is {op.state}, not FAILED: {otherwise}")
    return op


def _leave_failed(s: Session, op: Operation, **values: object) -> None:
    """Set `values` on the operation only if it is still FAILED: two operators
    acting at once, the second is refused instead of undoing the first."""
    moved = changed(s, sa.update(Operation).where(Operation.id == op.id, Operation.state == FAILED).values(**values))
    if moved != 1:
        raise Refused(f"operation {op.id} changed meanwhile (another operator?): look again")


def reopen_for_revert(s: Session, op_id: str, owner: str, lease_seconds: float, by: str) -> Operation:
    """Make a FAILED operation's failed reverts runnable again, in one transaction.

    taskflow, asked to run a flow whose revert failed, marks it REVERTED
    without reverting the steps before the failed one. So the failed atoms are
    put back to FAILURE (their execute failure kept, intention REVERT), the
    flow to RUNNING and the operation to REVERTING, owned by `owner`: running
    it then reverts the failed steps and every earlier one, through the same
    runner (leases, fencing, flow log) as any other run.
    """
    op = _failed_operation(s, op_id, "nothing to retry")
    fd_uuid = op.flow_detail_uuid or op.id
    if not failed_reverts(s, op):
        raise Refused(
            f"operation {op.id} has no failed revert to retry ({op.error}); after "
            "cleaning up by hand, record it with `computeflow ops mark-reverted`"
        )
    now = utcnow()
    _leave_failed(
        s,
        op,
        state=REVERTING,
        owner=owner,
        finished_at=None,
        lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
    )
    ad, fd = TASKFLOW_TABLES.atomdetails, TASKFLOW_TABLES.flowdetails
    s.execute(
        sa.update(ad)
        .where(ad.c.parent_uuid == fd_uuid, ad.c.state == _tf_states.REVERT_FAILURE)
        .values(state=_tf_states.FAILURE, intention=_tf_states.REVERT, revert_failure=None)
    )
    s.execute(sa.update(fd).where(fd.c.uuid == fd_uuid).values(state=_tf_states.RUNNING, updated_at=now))
    _annotate(s, fd_uuid, REVERT_RETRIED, f"by {by}")
    s.flush()
    s.refresh(op)
    return op


def mark_reverted(s: Session, op_id: str, by: str, note: str | None = None) -> Operation:
    """Record that an operator cleaned up a FAILED operation by hand: release
    its hold and claims, end it REVERTED, and say who and when in the flow log."""
    op = _failed_operation(s, op_id, "only a failed operation is marked reverted")
    now = utcnow()
    text = f"cleaned up by hand, recorded by {by} at {now.isoformat(timespec='seconds')}Z"
    error = f"{op.error or 'failed'}; {text}"
    _leave_failed(s, op, state=REVERTED, finished_at=now, owner=None, lease_expires_at=None, error=error)
    if op.instance_uuid:
        instances.release_hold(s, op.instance_uuid, op.id, task_state=None, vm_state=VmState.ERROR)
    for c in s.scalars(sa.select(Claim).where(Claim.operation_id == op.id)).all():
        claims.release(s, op.id, c.host)
    fd = TASKFLOW_TABLES.flowdetails
    s.execute(
        sa.update(fd)
        .where(fd.c.uuid == (op.flow_detail_uuid or op.id))
        .values(state=_tf_states.REVERTED, updated_at=now)
    )
    s.execute(sa.delete(Secret).where(Secret.operation_id == op.id))
    _annotate(s, op.flow_detail_uuid or op.id, MARKED_REVERTED, text + (f": {note}" if note else ""))
    s.flush()
    s.refresh(op)
    return op


def _annotate(s: Session, fd_uuid: str, state: str, text: str) -> None:
    """An operator's action as a "(flow)" row of the flow log (not a step move)."""
    s.add(
        FlowLogEntry(
            flow_detail_uuid=fd_uuid,
            atom_uuid=fd_uuid,
            step=FLOW_STEP,
            state=state,
            attempt=0,
            at=utcnow(),
            result=text,
        )
    )
