"""Operations: what was asked, who runs it, and how it ended.

Ownership is a lease: a conductor that runs an operation renews
`lease_expires_at`; anyone may take over an operation whose lease has expired
or whose owner is known to be dead. Taking over is one conditional UPDATE.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import Operation, utcnow

PENDING, RUNNING, REVERTING = "PENDING", "RUNNING", "REVERTING"
SUCCEEDED, REVERTED, FAILED = "SUCCEEDED", "REVERTED", "FAILED"
ACTIVE_STATES = (PENDING, RUNNING, REVERTING)
FINAL_STATES = (SUCCEEDED, REVERTED, FAILED)


def create(s: Session, op_id: str, kind: str, instance_uuid: str | None, parameters: dict,
           flow_version: int, owner: str | None, lease_seconds: float) -> Operation:
    now = utcnow()
    op = Operation(id=op_id, kind=kind, instance_uuid=instance_uuid, parameters=parameters,
                   state=PENDING, owner=owner, flow_version=flow_version, created_at=now,
                   lease_expires_at=now + dt.timedelta(seconds=lease_seconds) if owner else None)
    s.add(op)
    return op


def get(s: Session, op_id: str) -> Operation | None:
    op = s.get(Operation, op_id)
    if op is None and 4 <= len(op_id) < 36:
        matches = list(s.scalars(sa.select(Operation).where(Operation.id.startswith(op_id)).limit(2)))
        op = matches[0] if len(matches) == 1 else None
    return op


def take_ownership(s: Session, op_id: str, owner: str, lease_seconds: float,
                   dead_owners: tuple[str, ...] = ()) -> bool:
    """Become the owner if the operation is free, ours, expired, or its owner is dead."""
    now = utcnow()
    free = sa.or_(
        Operation.owner.is_(None),
        Operation.owner == owner,
        Operation.lease_expires_at < now,
        Operation.owner.in_(dead_owners) if dead_owners else sa.false(),
    )
    return s.execute(
        sa.update(Operation)
        .where(Operation.id == op_id, Operation.state.in_(ACTIVE_STATES), free)
        .values(owner=owner, lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
    ).rowcount == 1


def renew_leases(s: Session, owner: str, op_ids: list[str], lease_seconds: float) -> None:
    if op_ids:
        s.execute(
            sa.update(Operation)
            .where(Operation.id.in_(op_ids), Operation.owner == owner)
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
        )


def mark(s: Session, op_id: str, state: str, *, owner: str | None = None, error: str | None = None,
         flow_detail_uuid: str | None = None) -> None:
    """Record a state change; final states release ownership."""
    values: dict = {"state": state}
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
    s.execute(q.values(**values))


def resumable(s: Session) -> list[Operation]:
    """Operations not finished, oldest first."""
    return list(s.scalars(
        sa.select(Operation).where(Operation.state.in_(ACTIVE_STATES)).order_by(Operation.created_at)
    ))


def listing(s: Session, *, limit: int = 50, state: str | None = None,
            instance_uuid: str | None = None) -> list[Operation]:
    q = sa.select(Operation).order_by(Operation.created_at.desc()).limit(limit)
    if state:
        q = q.where(Operation.state == state)
    if instance_uuid:
        q = q.where(Operation.instance_uuid == instance_uuid)
    return list(s.scalars(q))
