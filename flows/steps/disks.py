"""Instance disks: the base-image cache and one step per disk."""

from __future__ import annotations

from typing import Any

from drivers.base import DiskKind, DiskSpec, Image
from flows import runtime
from flows.params import DiskParams, ImageParams, disk_params
from flows.steps.base import Step


class EnsureBaseImage(Step):
    """Put the image in the host's base-image cache (shared by instances; kept)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="ensure_base_image", **kw)

    def execute(self, host: str, image: ImageParams) -> str:
        return runtime.current().driver_for(host).ensure_base_image(Image(**image))


#: Step names spelled out so a search for one finds where it is made.
CREATE_DISK_STEP = {
    DiskKind.ROOT: "create_root_disk",
    DiskKind.EPHEMERAL: "create_ephemeral_disk",
    DiskKind.SWAP: "create_swap_disk",
}


class CreateDisk(Step):
    """Create one disk of the flavor; revert deletes it (found by instance + kind)."""

    def __init__(self, kind: DiskKind, size_mb: int, **kw: Any) -> None:
        super().__init__(name=CREATE_DISK_STEP[kind], provides=f"{kind.value}_disk", **kw)
        self.kind = kind
        self.size_mb = size_mb

    def execute(self, instance_uuid: str, host: str, image: ImageParams) -> DiskParams:
        spec = DiskSpec(self.kind, self.size_mb, Image(**image) if self.kind is DiskKind.ROOT else None)
        disk = runtime.current().driver_for(host).create_disk(instance_uuid, spec)
        return disk_params(disk)

    def revert(self, instance_uuid: str, host: str, **_: object) -> None:
        runtime.current().driver_for(host).delete_disk(instance_uuid, self.kind)


class DeleteInstanceFiles(Step):
    """Forward-only: remove every disk and file of the instance."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="delete_instance_files", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).delete_instance_files(instance_uuid)
