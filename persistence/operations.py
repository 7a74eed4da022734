"""Operations: what was asked, who runs it, and how it ended.

Ownership is a lease: a conductor that runs an operation renews
`lease_expires_at`; anyone may take over an operation whose lease has expired
or whose owner is known to be dead. Taking over is one conditional UPDATE.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from taskflow import states as _tf_states

from computeflow.states import VmState
from persistence import claims, host_slots, instances, notify
from persistence.errors import PersistenceError
from persistence.models import FLOW_STEP, TASKFLOW_TABLES, Claim, FlowLogEntry, Operation, Secret, utcnow
from persistence.session import changed

PENDING, RUNNING, REVERTING = "PENDING", "RUNNING", "REVERTING"
SUCCEEDED, REVERTED, FAILED = "SUCCEEDED", "REVERTED", "FAILED"
ACTIVE_STATES = (PENDING, RUNNING, REVERTING)
FINAL_STATES = (SUCCEEDED, REVERTED, FAILED)


def create(
    s: Session,
    op_id: str,
    kind: str,
    instance_uuid: str | None,
    parameters: dict[str, Any],
    flow_version: int,
    owner: str | None,
    lease_seconds: float,
) -> Operation:
    now = utcnow()
    op = Operation(
        id=op_id,
        kind=kind,
        instance_uuid=instance_uuid,
        parameters=parameters,
        state=PENDING,
        owner=owner,
        flow_version=flow_version,
        created_at=now,
        lease_expires_at=now + dt.timedelta(seconds=lease_seconds) if owner else None,
    )
    s.add(op)
    notify.announce(s, notify.JOBS, op_id)
    return op


def get(s: Session, op_id: str) -> Operation | None:
    op = s.get(Operation, op_id)
    if op is None and 4 <= len(op_id) < 36:
        matches = list(s.scalars(sa.select(Operation).where(Operation.id.startswith(op_id)).limit(2)))
        op = matches[0] if len(matches) == 1 else None
    return op


def not_found(s: Session, op_id: str) -> str:
    """Why `get` found nothing for `op_id`, in one line an operator can act on."""
    if len(op_id) < 4:
        return f"operation id {op_id!r} is too short: give at least 4 characters"
    if len(op_id) < 36:
        matches = list(
            s.scalars(sa.select(Operation.id).where(Operation.id.startswith(op_id)).order_by(Operation.id).limit(4))
        )
        if len(matches) > 1:
            return (
                f"operation id prefix {op_id!r} is ambiguous: it matches "
                f"{', '.join(matches[:3])}{', ...' if len(matches) > 3 else ''}"
            )
    return f"unknown operation {op_id!r}"


def take_ownership(
    s: Session, op_id: str, owner: str, lease_seconds: float, dead_owners: tuple[str, ...] = ()
) -> int | None:
    """Become the owner if the operation is free, ours, expired, or its owner is
    dead; returns the new ownership epoch (None: not taken).

    Every take bumps the epoch, so writes fenced on the previous one (a paused
    or partitioned former owner) are refused from the moment this commits.
    """
    now = utcnow()
    free = sa.or_(
        Operation.owner.is_(None),
        Operation.owner == owner,
        Operation.lease_expires_at < now,
        Operation.owner.in_(dead_owners) if dead_owners else sa.false(),
    )
    taken = (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op_id, Operation.state.in_(ACTIVE_STATES), free)
            .values(owner=owner, lease_expires_at=now + dt.timedelta(seconds=lease_seconds), epoch=Operation.epoch + 1),
        )
        == 1
    )
    if not taken:
        return None
    # Our own row, updated in this transaction: no one can change it before commit.
    return s.scalar(sa.select(Operation.epoch).where(Operation.id == op_id))


def renew_leases(s: Session, owner: str, op_ids: list[str], lease_seconds: float) -> None:
    if op_ids:
        s.execute(
            sa.update(Operation)
            .where(Operation.id.in_(op_ids), Operation.owner == owner)
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
        )


def mark(
    s: Session,
    op_id: str,
    state: str,
    *,
    owner: str | None = None,
    error: str | None = None,
    flow_detail_uuid: str | None = None,
    epoch: int | None = None,
) -> bool:
    """Record a state change; final states release ownership.

    With `owner` (and `epoch`), only while the caller still owns the operation
    (under that epoch); returns whether the change was recorded.
    """
    values: dict[str, Any] = {"state": state}
    now = utcnow()
    if state == RUNNING:
        values["started_at"] = sa.func.coalesce(Operation.started_at, now)
    if state in FINAL_STATES:
        values.update(finished_at=now, owner=None, lease_expires_at=None)
    if error is not None:
        values["error"] = error
    if flow_detail_uuid is not None:
        values["flow_detail_uuid"] = flow_detail_uuid
    q = sa.update(Operation).where(Operation.id == op_id)
    if owner is not None:
        q = q.where(Operation.owner == owner)
    if epoch is not None:
        q = q.where(Operation.epoch == epoch)
    recorded = changed(s, q.values(**values)) == 1
    if recorded and state in FINAL_STATES:
        notify.announce(s, notify.ENDED, op_id)
    return recorded


def mark_reverting(s: Session, op_id: str, owner: str, epoch: int, cause: str | None) -> bool:
    """The owner's flow started undoing its steps because of `cause` (kept if
    an error is already recorded: a resumed revert keeps the first cause)."""
    values: dict[str, Any] = {"state": REVERTING}
    if cause is not None:
        values["error"] = sa.func.coalesce(Operation.error, cause)
    return (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op_id, Operation.owner == owner, Operation.epoch == epoch)
            .values(**values),
        )
        == 1
    )


def resumable(s: Session) -> list[Operation]:
    """Operations not finished, oldest first."""
    return list(
        s.scalars(sa.select(Operation).where(Operation.state.in_(ACTIVE_STATES)).order_by(Operation.created_at))
    )


def listing(
    s: Session, *, limit: int = 50, state: str | None = None, instance_uuid: str | None = None
) -> list[Operation]:
    q = sa.select(Operation).order_by(Operation.created_at.desc()).limit(limit)
    if state:
        q = q.where(Operation.state == state)
    if instance_uuid:
        q = q.where(Operation.instance_uuid == instance_uuid)
    return list(s.scalars(q))


#: Parameters that name a host an operation touched (spawn's placement, a
#: move's source and destination); `history.read_page(host=...)` matches any of them.
HOST_PARAMS = ("host", "target_host", "source_host", "dest_host", "destination")
#: And destroy's list of hosts holding a copy (not matched in SQL: a list).
HOST_LIST_PARAMS = ("copy_hosts",)


def last_for_instance(s: Session, instance_uuid: str) -> Operation | None:
    """The instance's newest operation (ix_operations_instance_created)."""
    return s.scalars(
        sa.select(Operation)
        .where(Operation.instance_uuid == instance_uuid)
        .order_by(Operation.created_at.desc())
        .limit(1)
    ).first()


# -- cancellation and operator repair (policy: conductor/cancel.py, conductor/repair.py) --

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


def still_owned(s: Session, owner: str, op_ids: list[str]) -> dict[str, str | None]:
    """{operation id: who asked it to stop, or None} for those of `op_ids` this
    owner still owns; the others were taken over (terminate) or ended. One
    read per lease renewal serves both the cancel requests and the losses."""
    if not op_ids:
        return {}
    return dict(
        s.execute(
            sa.select(Operation.id, Operation.cancel_requested_by).where(
                Operation.id.in_(op_ids), Operation.owner == owner
            )
        ).all()
    )


def run_context(s: Session, op_id: str) -> tuple[int, str | None] | None:
    """(epoch, cancel requested by) of an operation, read when a run starts."""
    row = s.execute(sa.select(Operation.epoch, Operation.cancel_requested_by).where(Operation.id == op_id)).first()
    return (row[0], row[1]) if row else None


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


def reopen_for_revert(s: Session, op_id: str, owner: str, lease_seconds: float, by: str) -> Operation:
    """Make a FAILED operation's failed reverts runnable again, in one transaction.

    taskflow, asked to run a flow whose revert failed, marks it REVERTED
    without reverting the steps before the failed one. So the failed atoms are
    put back to FAILURE (their execute failure kept, intention REVERT), the
    flow to RUNNING and the operation to REVERTING, owned by `owner`: running
    it then reverts the failed steps and every earlier one, through the same
    runner (leases, fencing, flow log) as any other run.
    """
    op = get(s, op_id)
    if op is None:
        raise Refused(not_found(s, op_id))
    if op.state != FAILED:
        raise Refused(f"operation {op.id} is {op.state}, not FAILED: nothing to retry")
    fd_uuid = op.flow_detail_uuid or op.id
    if not failed_reverts(s, op):
        raise Refused(
            f"operation {op.id} has no failed revert to retry ({op.error}); after "
            "cleaning up by hand, record it with `computeflow ops mark-reverted`"
        )
    now = utcnow()
    if (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op.id, Operation.state == FAILED)
            .values(
                state=REVERTING,
                owner=owner,
                finished_at=None,
                lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            ),
        )
        != 1
    ):
        raise Refused(f"operation {op.id} changed meanwhile (another operator?): look again")
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
    op = get(s, op_id)
    if op is None:
        raise Refused(not_found(s, op_id))
    if op.state != FAILED:
        raise Refused(f"operation {op.id} is {op.state}, not FAILED: only a failed operation is marked reverted")
    now = utcnow()
    text = f"cleaned up by hand, recorded by {by} at {now.isoformat(timespec='seconds')}Z"
    if (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op.id, Operation.state == FAILED)
            .values(
                state=REVERTED,
                finished_at=now,
                owner=None,
                lease_expires_at=None,
                error=f"{op.error or 'failed'}; {text}",
            ),
        )
        != 1
    ):
        raise Refused(f"operation {op.id} changed meanwhile (another operator?): look again")
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


def log_attempt(
    s: Session,
    op_id: str,
    owner: str,
    epoch: int | None,
    step: str,
    state: str,
    *,
    error: str | None = None,
    traceback: str | None = None,
    result: str | None = None,
) -> bool:
    """A flow-log row for one retry of a step (RETRYING after a transient
    failure, RUNNING when the next attempt starts), numbered after the step's
    earlier runs. Written only while `owner` (at `epoch`) still owns the
    operation: the row is locked first, so a takeover waits for this commit.
    Returns False, writing nothing, when the operation was taken over."""
    owned = sa.select(Operation.id).where(Operation.id == op_id, Operation.owner == owner)
    if epoch is not None:
        owned = owned.where(Operation.epoch == epoch)
    if s.execute(owned.with_for_update()).first() is None:
        return False
    runs = s.execute(
        sa.select(sa.func.count(), sa.func.max(FlowLogEntry.atom_uuid)).where(
            FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step == step, FlowLogEntry.state == _tf_states.RUNNING
        )
    ).one()
    attempt = runs[0] + 1 if state == _tf_states.RUNNING else max(runs[0], 1)
    s.add(
        FlowLogEntry(
            flow_detail_uuid=op_id,
            atom_uuid=runs[1] or "",
            step=step,
            state=state,
            attempt=attempt,
            at=utcnow(),
            error=error,
            traceback=traceback,
            result=result,
            epoch=epoch,
        )
    )
    return True


def forward_phase_started(s: Session, op_id: str, no_return_step: str | None) -> bool:
    """Whether the operation passed its point of no return: its
    `no_return_step` (the catalogue's, e.g. live migration's post-switch-over
    retry controller) started. Read only when a cancel is being decided."""
    if no_return_step is None:
        return False
    return (
        s.scalar(
            sa.select(FlowLogEntry.id)
            .where(
                FlowLogEntry.flow_detail_uuid == op_id,
                FlowLogEntry.step == no_return_step,
                FlowLogEntry.state.in_((_tf_states.RUNNING, _tf_states.SUCCESS)),
            )
            .limit(1)
        )
        is not None
    )


# -- what the conductor service asks of the operations table about its jobs --
def mark_unloadable(s: Session, op_id: str, reason: str | None) -> None:
    """Report, on the operation itself, why a conductor left its job alone."""
    s.execute(
        sa.update(Operation).where(Operation.id == op_id, Operation.state.in_(ACTIVE_STATES)).values(error=reason)
    )


def release_ownership(s: Session, op_id: str, owner: str) -> bool:
    """A suspended operation is free at once for the next conductor."""
    if (
        changed(
            s,
            sa.update(Operation)
            .where(Operation.id == op_id, Operation.owner == owner, Operation.state.in_(ACTIVE_STATES))
            .values(owner=None, lease_expires_at=None),
        )
        != 1
    ):
        return False
    notify.announce(s, notify.JOBS, op_id)
    return True


def unowned(s: Session) -> list[tuple[str, dt.datetime]]:
    """(id, created_at) of active operations nobody holds: free, or whose owner's lease lapsed."""
    rows = s.execute(
        sa.select(Operation.id, Operation.created_at)
        .where(
            Operation.state.in_(ACTIVE_STATES), sa.or_(Operation.owner.is_(None), Operation.lease_expires_at < utcnow())
        )
        .order_by(Operation.created_at)
    )
    return [(r.id, r.created_at) for r in rows]
