"""Hosts, flavors and images: the catalogue operations are checked against."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import Flavor, Host, Image, Operation
from persistence.operations import PENDING
from persistence.session import changed


def add_host(s: Session, name: str, driver: str, uri: str | None, vcpus: int, ram_mb: int, disk_gb: int) -> Host:
    host = Host(
        name=name,
        driver=driver,
        uri=uri,
        vcpus=vcpus,
        ram_mb=ram_mb,
        disk_gb=disk_gb,
        used_vcpus=0,
        used_ram_mb=0,
        used_disk_gb=0,
    )
    s.add(host)
    return host


def get_host(s: Session, name: str) -> Host | None:
    return s.get(Host, name)


def list_hosts(s: Session) -> list[Host]:
    return list(s.scalars(sa.select(Host).order_by(Host.name)))


def pending_spawn_ram_mb(s: Session) -> dict[str, int]:
    """RAM (MB) by host of the spawns placed there that have not started: they
    hold no claim yet, so the hosts' used_* columns do not show them.

    Read from the operations' own parameters (`host`, `flavor.ram_mb`) in SQL,
    one grouped scan of the PENDING operations (ix_operations_state_created_id)."""
    host = Operation.parameters["host"].as_string()
    ram = Operation.parameters["flavor"]["ram_mb"].as_integer()
    rows = s.execute(
        sa.select(host, sa.func.sum(ram)).where(Operation.state == PENDING, Operation.kind == "spawn").group_by(host)
    ).all()
    return {name: int(total) for name, total in rows if name is not None and total is not None}


def down_names(s: Session) -> set[str]:
    """Hosts marked down: their instances' power state is only the last one known."""
    return set(s.scalars(sa.select(Host.name).where(Host.down.is_(True))))


def set_down(s: Session, name: str, down: bool) -> bool:
    """Mark a host down (or up again); False if there is no such host."""
    return changed(s, sa.update(Host).where(Host.name == name).values(down=down)) == 1


def get_flavor(s: Session, name: str) -> Flavor | None:
    return s.get(Flavor, name)


def list_flavors(s: Session) -> list[Flavor]:
    return list(s.scalars(sa.select(Flavor).order_by(Flavor.vcpus, Flavor.ram_mb)))


def get_image(s: Session, name: str) -> Image | None:
    return s.get(Image, name)


def list_images(s: Session) -> list[Image]:
    return list(s.scalars(sa.select(Image).order_by(Image.name)))


def add_image(
    s: Session, name: str, disk_format: str, size_mb: int, path: str | None, checksum: str | None = None
) -> Image:
    img = Image(name=name, disk_format=disk_format, size_mb=size_mb, path=path, checksum=checksum)
    s.add(img)
    return img


def delete_image(s: Session, name: str, path: str) -> None:
    """Delete an image record only if it is the one at `path` (a snapshot's own)."""
    s.execute(sa.delete(Image).where(Image.name == name, Image.path == path))
