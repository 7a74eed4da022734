"""Lifecycle events the hypervisor reported without being asked."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import InstanceEvent, utcnow


def record(s: Session, instance_uuid: str, host: str, event: str, power_state: str) -> None:
    s.add(InstanceEvent(instance_uuid=instance_uuid, host=host, event=event, power_state=power_state, at=utcnow()))


def for_instance(s: Session, instance_uuid: str) -> list[InstanceEvent]:
    return list(
        s.scalars(
            sa.select(InstanceEvent).where(InstanceEvent.instance_uuid == instance_uuid).order_by(InstanceEvent.id)
        )
    )
