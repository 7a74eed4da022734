"""Operations: what was asked, who runs it, and how it ended.

Ownership is a lease: a conductor that runs an operation renews
`lease_expires_at`; anyone may take over an operation whose lease has expired
or whose owner is known to be dead. Taking over is one conditional UPDATE.

What is done to an operation besides running it (cancel, terminate, an
operator's repair) is in `operator_actions`.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from taskflow import states as _tf_states

from persistence import notify
from persistence.models import FlowLogEntry, Operation, utcnow
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
    s: Session,
    op_id: str,
    owner: str,
    lease_seconds: float,
    dead_owners: tuple[str, ...] = (),
    *,
    start: bool = False,
) -> int | None:
    """Become the owner if the operation is free, ours, expired, or its owner is
    dead; returns the new ownership epoch (None: not taken).

    Every take bumps the epoch, so writes fenced on the previous one (a paused
    or partitioned former owner) are refused from the moment this commits.
    With `start`, a PENDING operation becomes RUNNING in the same statement
    (its run starts now). The operation's object in `s`, if loaded, is
    refreshed by the same round trip (PostgreSQL, SQLite) or one more (MariaDB).
    """
    now = utcnow()
    returning = s.get_bind().dialect.update_returning  # PostgreSQL, SQLite: one round trip
    params = {
        "op_id": op_id,
        "owner": owner,
        "now": now,
        "lease_until": now + dt.timedelta(seconds=lease_seconds),
        "dead": list(dead_owners),
    }
    take = _take_statement(start, bool(dead_owners), returning)
    if returning:
        taken = s.scalar(take, params)
        return None if taken is None else taken.epoch
    if changed(s, take, params) != 1:
        return None
    # Our own row, updated in this transaction: no one can change it before commit.
    reread = sa.select(Operation).where(Operation.id == op_id).execution_options(populate_existing=True)
    return s.scalars(reread).one().epoch


@functools.cache
def _take_statement(start: bool, with_dead: bool, returning: bool) -> sa.Update:
    """take_ownership's UPDATE, built once per variant (building it costs more
    Python than the server spends running it)."""
    now = sa.bindparam("now", type_=Operation.started_at.type)  # typed: it is also a CASE's result
    owner = sa.bindparam("owner", type_=Operation.owner.type)
    free = sa.or_(
        Operation.owner.is_(None),
        Operation.owner == owner,
        Operation.lease_expires_at < now,
        Operation.owner.in_(sa.bindparam("dead", expanding=True)) if with_dead else sa.false(),
    )
    values: list[tuple[Any, Any]] = []
    if start:
        # Before `state`: MariaDB evaluates SET left to right, each seeing the
        # assignments before it (SQL's own rule, every other database's, is the old row).
        first = Operation.state == PENDING
        values += [
            (Operation.started_at, sa.case((first, now), else_=Operation.started_at)),
            (Operation.flow_detail_uuid, sa.case((first, Operation.id), else_=Operation.flow_detail_uuid)),
            (Operation.state, sa.case((first, RUNNING), else_=Operation.state)),
        ]
    values += [
        (Operation.owner, owner),
        (Operation.lease_expires_at, sa.bindparam("lease_until", type_=Operation.lease_expires_at.type)),
        (Operation.epoch, Operation.epoch + 1),
    ]
    take = (
        sa.update(Operation)
        .where(Operation.id == sa.bindparam("op_id"), Operation.state.in_(ACTIVE_STATES), free)
        .ordered_values(*values)
        .execution_options(synchronize_session=False)
    )
    return take.returning(Operation).execution_options(populate_existing=True) if returning else take


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


# -- what a run reads and records while it owns the operation --
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
