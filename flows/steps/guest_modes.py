"""Steps that change what a guest boots from: rescue, unrescue, rebuild.

Each is undone by the opposite driver call. Those calls leave the guest
running, so a revert also stops it again when it was stopped before the
operation (`prior_power_state`, recorded at submission). None of them creates
or removes a guest, so a revert that finds no guest has nothing to undo (the
execute failed on the same missing guest): it ends quietly, and the instance
is shown in error by the failed operation, not held for a repair.
"""

from __future__ import annotations

import contextlib
from typing import Any

from drivers.base import ComputeDriver, Image, PowerState
from drivers.errors import GuestNotFound
from flows import runtime
from flows.params import ImageParams
from flows.steps.base import Step


def _restore_power(drv: ComputeDriver, instance_uuid: str, prior_power_state: str | None) -> None:
    if prior_power_state == PowerState.SHUTDOWN.value:
        drv.power_off(instance_uuid)


class RescueGuest(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="rescue_guest", **kw)

    def execute(self, instance_uuid: str, host: str, rescue_image: ImageParams) -> None:
        runtime.current().driver_for(host).rescue(instance_uuid, Image(**rescue_image))

    def revert(self, instance_uuid: str, host: str, prior_power_state: str | None = None, **_: object) -> None:
        drv = runtime.current().driver_for(host)
        with contextlib.suppress(GuestNotFound):
            drv.unrescue(instance_uuid)
            _restore_power(drv, instance_uuid, prior_power_state)


class UnrescueGuest(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="unrescue_guest", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).unrescue(instance_uuid)

    def revert(self, instance_uuid: str, host: str, rescue_image: ImageParams, **_: object) -> None:
        with contextlib.suppress(GuestNotFound):
            runtime.current().driver_for(host).rescue(instance_uuid, Image(**rescue_image))


class RebuildGuest(Step):
    """Re-create the root disk from the new image; revert rebuilds from the old
    one (the old root disk's data is gone either way, as with any rebuild)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="rebuild_guest", **kw)

    def execute(self, instance_uuid: str, host: str, new_image: ImageParams, preserve_ephemeral: bool = False) -> None:
        runtime.current().driver_for(host).rebuild(instance_uuid, Image(**new_image), preserve_ephemeral)

    def revert(
        self, instance_uuid: str, host: str, prior_image: ImageParams, prior_power_state: str | None = None, **_: object
    ) -> None:
        drv = runtime.current().driver_for(host)
        with contextlib.suppress(GuestNotFound):
            drv.rebuild(instance_uuid, Image(**prior_image), preserve_ephemeral=True)
            _restore_power(drv, instance_uuid, prior_power_state)
