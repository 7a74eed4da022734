"""Instance disks: the base-image cache and one step per disk."""
from __future__ import annotations

from drivers.base import DiskKind, DiskSpec, Image
from flows import runtime
from flows.steps.base import Step


class EnsureBaseImage(Step):
    """Put the image in the host's base-image cache (shared by instances; kept)."""

    def __init__(self, **kw) -> None:
        super().__init__(name="ensure_base_image", **kw)

    def execute(self, host: str, image: dict) -> str:
        return runtime.current().driver_for(host).ensure_base_image(Image(**image))


class CreateDisk(Step):
    """Create one disk of the flavor; revert deletes it (found by instance + kind)."""

    def __init__(self, kind: DiskKind, size_mb: int, **kw) -> None:
        super().__init__(name=f"create_{kind.value}_disk", provides=f"{kind.value}_disk", **kw)
        self.kind = kind
        self.size_mb = size_mb

    def execute(self, instance_uuid: str, host: str, image: dict) -> dict:
        spec = DiskSpec(self.kind, self.size_mb, Image(**image) if self.kind is DiskKind.ROOT else None)
        disk = runtime.current().driver_for(host).create_disk(instance_uuid, spec)
        return {"kind": disk.kind.value, "path": disk.path, "size_mb": disk.size_mb,
                "backing_file": disk.backing_file, "preallocated": disk.preallocated}

    def revert(self, instance_uuid: str, host: str, **_) -> None:
        runtime.current().driver_for(host).delete_disk(instance_uuid, self.kind)


class DeleteInstanceFiles(Step):
    """Forward-only: remove every disk and file of the instance."""

    def __init__(self, **kw) -> None:
        super().__init__(name="delete_instance_files", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).delete_instance_files(instance_uuid)
