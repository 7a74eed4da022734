"""Volumes and interfaces attached to a running guest; each undone by its inverse."""

from __future__ import annotations

from typing import Any

from drivers.base import Vif
from flows import runtime
from flows.steps.base import Step


def _info(volume_id: str) -> dict[str, Any]:
    return {"volume_id": volume_id, "driver_volume_type": "fake"}


class AttachVolume(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="attach_volume", **kw)

    def execute(self, instance_uuid: str, host: str, volume_id: str, mountpoint: str) -> None:
        runtime.current().driver_for(host).attach_volume(instance_uuid, _info(volume_id), mountpoint)

    def revert(self, instance_uuid: str, host: str, volume_id: str, mountpoint: str, **_: object) -> None:
        runtime.current().driver_for(host).detach_volume(instance_uuid, _info(volume_id), mountpoint)


class DetachVolume(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="detach_volume", **kw)

    def execute(self, instance_uuid: str, host: str, volume_id: str, mountpoint: str) -> None:
        runtime.current().driver_for(host).detach_volume(instance_uuid, _info(volume_id), mountpoint)

    def revert(self, instance_uuid: str, host: str, volume_id: str, mountpoint: str, **_: object) -> None:
        runtime.current().driver_for(host).attach_volume(instance_uuid, _info(volume_id), mountpoint)


class SwapVolume(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="swap_volume", **kw)

    def execute(self, instance_uuid: str, host: str, volume_id: str, new_volume_id: str, mountpoint: str) -> None:
        runtime.current().driver_for(host).swap_volume(
            instance_uuid, _info(volume_id), _info(new_volume_id), mountpoint
        )

    def revert(
        self, instance_uuid: str, host: str, volume_id: str, new_volume_id: str, mountpoint: str, **_: object
    ) -> None:
        runtime.current().driver_for(host).swap_volume(
            instance_uuid, _info(new_volume_id), _info(volume_id), mountpoint
        )


class AttachInterface(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="attach_interface", **kw)

    def execute(self, instance_uuid: str, host: str, vif: dict[str, Any]) -> None:
        runtime.current().driver_for(host).attach_interface(instance_uuid, Vif(**vif))

    def revert(self, instance_uuid: str, host: str, vif: dict[str, Any], **_: object) -> None:
        runtime.current().driver_for(host).detach_interface(instance_uuid, vif["id"])


class DetachInterface(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="detach_interface", **kw)

    def execute(self, instance_uuid: str, host: str, vif: dict[str, Any]) -> None:
        runtime.current().driver_for(host).detach_interface(instance_uuid, vif["id"])

    def revert(self, instance_uuid: str, host: str, vif: dict[str, Any], **_: object) -> None:
        runtime.current().driver_for(host).attach_interface(instance_uuid, Vif(**vif))
