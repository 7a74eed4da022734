"""Shapes of the stored parameters that several flows share.

taskflow persists a flow's store as JSON, so a flavor, an image or a disk
travels between submission and steps (and across a crash) as a plain dict.
These TypedDicts name the keys once; the driver dataclasses they convert to
(drivers.base.Flavor, Image, Disk) stay the driver contract.
"""

from __future__ import annotations

from typing import Any, TypedDict

from drivers.base import Disk, DiskKind


class FlavorParams(TypedDict):
    """A flavor as flows store it (prepare.flavor_dict); `Flavor(**f)` for a driver."""

    name: str
    vcpus: int
    ram_mb: int
    root_gb: int
    ephemeral_gb: int
    swap_mb: int


class ImageParams(TypedDict):
    """An image as flows store it (prepare.image_dict); `Image(**i)` for a driver."""

    name: str
    disk_format: str
    size_mb: int
    path: str | None


class DiskParams(TypedDict):
    """A disk a step created or moved, as it provides it to later steps."""

    kind: str
    path: str
    size_mb: int
    backing_file: str | None
    preallocated: bool


def disk_params(disk: Disk) -> DiskParams:
    return {
        "kind": disk.kind.value,
        "path": disk.path,
        "size_mb": disk.size_mb,
        "backing_file": disk.backing_file,
        "preallocated": disk.preallocated,
    }


def disk_of(d: DiskParams) -> Disk:
    return Disk(DiskKind(d["kind"]), d["path"], d["size_mb"], d["backing_file"], d["preallocated"])


#: A claim recorded at submission for a later step to release or restore:
#: [operation_id, host, vcpus, ram_mb, disk_gb] (a JSON list once stored).
ClaimRow = list[Any]
