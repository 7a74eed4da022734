"""Instances and the hold: which operation may change an instance right now."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from computeflow.states import TaskState, VmState
from persistence.models import Instance
from persistence.session import changed


def create(
    s: Session, uuid: str, name: str, flavor: str, image: str, held_by: str | None, vifs: list[dict[str, Any]]
) -> Instance:
    inst = Instance(
        uuid=uuid,
        name=name,
        live_marker="",
        flavor=flavor,
        image=image,
        vifs=vifs,
        vm_state=VmState.BUILDING,
        power_state="nostate",
        task_state=TaskState.SCHEDULING,
        held_by=held_by,
    )
    s.add(inst)
    return inst


def get(s: Session, uuid: str) -> Instance | None:
    return s.get(Instance, uuid)


def find_live(s: Session, name_or_uuid: str) -> Instance | None:
    """A live (not deleted) instance by name, or any instance by uuid."""
    inst = s.scalars(sa.select(Instance).where(Instance.name == name_or_uuid, Instance.live_marker == "")).first()
    if inst is not None or not _is_uuid(name_or_uuid):
        return inst  # a name that is no uuid needs no second look (every submission asks)
    return s.get(Instance, name_or_uuid)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def ever_named(s: Session, name_or_uuid: str) -> bool:
    """Whether any instance, deleted or live, has this name or uuid."""
    return (
        s.scalar(
            sa.select(Instance.uuid)
            .where(sa.or_(Instance.name == name_or_uuid, Instance.uuid == name_or_uuid))
            .limit(1)
        )
        is not None
    )


def find_deleted(s: Session, name: str) -> Instance | None:
    """The most recently deleted instance that had this name."""
    return s.scalars(
        sa.select(Instance)
        .where(Instance.name == name, Instance.live_marker != "")
        .order_by(Instance.updated_at.desc())
        .limit(1)
    ).first()


def list_live(s: Session, include_deleted: bool = False) -> list[Instance]:
    q = sa.select(Instance).order_by(Instance.created_at)
    if not include_deleted:
        q = q.where(Instance.live_marker == "")
    return list(s.scalars(q))


def take_hold(s: Session, uuid: str, operation_id: str) -> str | None:
    """Compare-and-swap the hold. Returns None on success, else the current holder."""
    taken = changed(
        s,
        sa.update(Instance)
        .where(Instance.uuid == uuid, sa.or_(Instance.held_by.is_(None), Instance.held_by == operation_id))
        .values(held_by=operation_id),
    )
    if taken == 1:
        return None
    holder = s.scalar(sa.select(Instance.held_by).where(Instance.uuid == uuid))
    return holder or "<instance not found>"


def release_hold(s: Session, uuid: str, operation_id: str, **changes: Any) -> None:
    """Drop the hold if this operation has it, applying `changes` in the same UPDATE."""
    s.execute(
        sa.update(Instance)
        .where(Instance.uuid == uuid, Instance.held_by == operation_id)
        .values(held_by=None, **changes)
    )


def show_failed(s: Session, operation_id: str) -> None:
    """The instance this (FAILED) operation holds shows `error`, no task."""
    s.execute(
        sa.update(Instance).where(Instance.held_by == operation_id).values(vm_state=VmState.ERROR, task_state=None)
    )


def update_if_held(s: Session, uuid: str, operation_id: str, **changes: Any) -> bool:
    """Change columns only while this operation holds the instance."""
    return (
        changed(s, sa.update(Instance).where(Instance.uuid == uuid, Instance.held_by == operation_id).values(**changes))
        == 1
    )


def set_power_state(s: Session, uuid: str, power_state: str) -> None:
    s.execute(sa.update(Instance).where(Instance.uuid == uuid).values(power_state=power_state))


#: Power states a hypervisor reports for a guest that is no longer running.
STOPPED_BY_ITSELF = frozenset({"shutdown", "crashed"})


def sync_power_state(s: Session, uuid: str, host: str, power_state: str) -> bool:
    """Apply a power state the hypervisor reported on its own.

    Only while no operation holds the instance (a running operation owns the
    record) and only if the instance lives on the reporting host. An active
    instance whose guest stopped by itself, cleanly or not (its QEMU process
    killed: "crashed"), is shown stopped, so that it can be powered on again;
    the power state keeps which. True if the record changed.
    """
    base = sa.update(Instance).where(Instance.uuid == uuid, Instance.host == host, Instance.held_by.is_(None))
    vm_state = (
        sa.case((Instance.vm_state == VmState.ACTIVE, VmState.STOPPED), else_=Instance.vm_state)
        if power_state in STOPPED_BY_ITSELF
        else Instance.vm_state
    )
    return changed(s, base.values(power_state=power_state, vm_state=vm_state)) == 1
