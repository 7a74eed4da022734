"""Resource claims: one conditional UPDATE decides whether a host has room.

`claim` and `release` are idempotent on (operation, host): the claims row is
the proof that usage was added, and both changes happen in one transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import Claim, Host
from persistence.session import changed


def claim(s: Session, operation_id: str, host: str, instance_uuid: str, vcpus: int, ram_mb: int, disk_gb: int) -> bool:
    """Add the claim; False if the host lacks room. True if already claimed."""
    if s.get(Claim, (operation_id, host)) is not None:
        return True
    added = changed(
        s,
        sa.update(Host)
        .where(
            Host.name == host,
            Host.used_vcpus + vcpus <= Host.vcpus,
            Host.used_ram_mb + ram_mb <= Host.ram_mb,
            Host.used_disk_gb + disk_gb <= Host.disk_gb,
        )
        .values(
            used_vcpus=Host.used_vcpus + vcpus,
            used_ram_mb=Host.used_ram_mb + ram_mb,
            used_disk_gb=Host.used_disk_gb + disk_gb,
        ),
    )
    if added != 1:
        return False
    s.add(
        Claim(
            operation_id=operation_id,
            host=host,
            instance_uuid=instance_uuid,
            vcpus=vcpus,
            ram_mb=ram_mb,
            disk_gb=disk_gb,
        )
    )
    return True


def release(s: Session, operation_id: str, host: str) -> None:
    """Give the claim's resources back; no-op if it was already released."""
    c = s.get(Claim, (operation_id, host), with_for_update=True)
    if c is None:
        return
    s.execute(
        sa.update(Host)
        .where(Host.name == host)
        .values(
            used_vcpus=Host.used_vcpus - c.vcpus,
            used_ram_mb=Host.used_ram_mb - c.ram_mb,
            used_disk_gb=Host.used_disk_gb - c.disk_gb,
        )
    )
    s.delete(c)


def release_for_instance(s: Session, instance_uuid: str, host: str) -> None:
    """Release every claim an instance holds on a host (destroy)."""
    for c in s.scalars(sa.select(Claim).where(Claim.instance_uuid == instance_uuid, Claim.host == host)):
        release(s, c.operation_id, host)


def claims_for_instance(s: Session, instance_uuid: str) -> list[Claim]:
    return list(s.scalars(sa.select(Claim).where(Claim.instance_uuid == instance_uuid)))


def all_claims(s: Session) -> list[Claim]:
    return list(s.scalars(sa.select(Claim)))
