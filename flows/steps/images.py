"""The local image store: a snapshot's file and its images-table record."""

from __future__ import annotations

import glob
import os
from typing import Any, TypedDict

from flows import runtime
from flows.errors import InvalidRequest
from flows.steps.base import Step
from persistence import hosts


class SnapshotFile(TypedDict):
    """What snapshot_guest provides to register_image."""

    disk_format: str
    size_mb: int


class SnapshotGuest(Step):
    """Write the root disk to the image store; revert deletes the file (and any
    half-written temporary file a crash left next to it)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="snapshot_guest", provides="snapshot", **kw)

    def execute(self, instance_uuid: str, host: str, image_path: str) -> SnapshotFile:
        img = runtime.current().driver_for(host).snapshot(instance_uuid, image_path)
        return {"disk_format": img.disk_format, "size_mb": img.size_mb}

    def revert(self, image_path: str, **_: object) -> None:
        for path in [image_path, *glob.glob(glob.escape(image_path) + ".*.tmp")]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


class RegisterImage(Step):
    """Record the snapshot in the images table, so that a spawn can use it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="register_image", **kw)

    def execute(self, image_name: str, image_path: str, snapshot: SnapshotFile) -> None:
        with runtime.current().db.session() as s:
            existing = hosts.get_image(s, image_name)
            if existing is None:
                hosts.add_image(s, image_name, snapshot["disk_format"], snapshot["size_mb"], image_path)
            elif existing.path != image_path:
                raise InvalidRequest(f"an image named {image_name!r} already exists")

    def revert(self, image_name: str, image_path: str, **_: object) -> None:
        with runtime.current().db.session() as s:
            hosts.delete_image(s, image_name, image_path)
