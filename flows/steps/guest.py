"""The guest itself: define, start, wait for it, stop, undefine."""

from __future__ import annotations

import contextlib

import logging
import threading
import time
from typing import Any

from drivers.base import DiskKind, Flavor, GuestSpec, PowerState, Vif
from drivers.errors import GuestNotFound, InvalidGuestState, SoftRebootFailed
from flows import runtime
from flows.errors import BootTimeout
from flows.params import DiskParams, FlavorParams, disk_of
from flows.steps.base import GUEST_ABSENT, GUEST_DEFINED, Step
from persistence import instances

_POLL_S = 0.2
#: The guest's power state once a power action is done (probed by recovery).
#: Each power action's step, spelled out so a search for the name finds it.
_ACTION_STEP = {
    "power_on": "power_on_guest",
    "power_off": "power_off_guest",
    "pause": "pause_guest",
    "unpause": "unpause_guest",
    "suspend": "suspend_guest",
    "resume": "resume_guest",
    "soft_delete": "soft_delete_guest",
    "restore": "restore_guest",
}
_POWER_AFTER = {
    "power_on": "running",
    "power_off": "shutdown",
    "pause": "paused",
    "unpause": "running",
    "suspend": "suspended",
    "resume": "running",
    "soft_delete": "shutdown",
    "restore": "running",
}
LOG = logging.getLogger(__name__)


class DefineGuest(Step):
    """Register the guest with the hypervisor; the admin password is decrypted
    here, in memory, and goes nowhere but the driver."""

    probe_guest = GUEST_DEFINED

    def __init__(self, disk_kinds: list[DiskKind], vifs: list[dict[str, Any]], **kw: Any) -> None:
        requires = [f"{k.value}_disk" for k in disk_kinds]
        super().__init__(name="define_guest", requires=requires, **kw)
        self.vifs = vifs
        self.disk_names = requires

    def execute(
        self,
        instance_uuid: str,
        name: str,
        host: str,
        flavor: FlavorParams,
        admin_password: dict[str, Any] | None,
        **disks: DiskParams,
    ) -> None:
        rt = runtime.current()
        password = None
        if admin_password is not None:
            with rt.db.session() as s:
                password = rt.secrets.reveal(s, admin_password)
        spec = GuestSpec(
            instance_uuid=instance_uuid,
            name=name,
            flavor=Flavor(**flavor),
            disks=tuple(disk_of(disks[n]) for n in self.disk_names),
            vifs=tuple(Vif(**v) for v in self.vifs),
            admin_password=password,
        )
        rt.driver_for(host).define_guest(spec)

    def revert(self, instance_uuid: str, host: str, **_: object) -> None:
        runtime.current().driver_for(host).undefine_guest(instance_uuid)


class PowerOn(Step):
    probe_guest = PowerState.RUNNING.value

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="power_on", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).power_on(instance_uuid)

    def revert(self, instance_uuid: str, host: str, **_: object) -> None:
        try:
            runtime.current().driver_for(host).power_off(instance_uuid)
        except GuestNotFound:
            pass


class WaitRunning(Step):
    """Poll the hypervisor until the guest runs, within boot_timeout."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="wait_running", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        rt = runtime.current()
        drv, timeout = rt.driver_for(host), rt.conf.boot_timeout
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while drv.get_info(instance_uuid).state is not PowerState.RUNNING:
            if time.monotonic() > deadline:
                raise BootTimeout(instance_uuid, timeout)
            pause.wait(_POLL_S)


class PowerOffGuest(Step):
    """Forward-only: stop the guest if it still exists and runs."""

    probe_guest = PowerState.SHUTDOWN.value

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="power_off", **kw)

    def execute(self, operation_id: str, instance_uuid: str, host: str) -> None:
        rt = runtime.current()
        try:
            rt.driver_for(host).power_off(instance_uuid, timeout=0)
        except GuestNotFound:
            pass
        with rt.db.session() as s:
            instances.update_if_held(s, instance_uuid, operation_id, power_state="shutdown")


class UndefineGuest(Step):
    """Forward-only: remove the guest's definition."""

    probe_guest = GUEST_ABSENT

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="undefine_guest", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).undefine_guest(instance_uuid)


class GuestAction(Step):
    """One power action through the driver; its revert calls the inverse action.

    The fake and libvirt drivers treat an action whose target state already
    holds as done, so both directions are idempotent.
    """

    def __init__(self, action: str, undo: str | None, **kw: Any) -> None:
        super().__init__(name=_ACTION_STEP[action], **kw)
        self.action = action
        self.undo = undo
        self.probe_guest = _POWER_AFTER.get(action)

    def execute(self, instance_uuid: str, host: str) -> None:
        getattr(runtime.current().driver_for(host), self.action)(instance_uuid)

    def revert(self, instance_uuid: str, host: str, **_: object) -> None:
        if self.undo:
            with contextlib.suppress(GuestNotFound):  # gone: nothing of ours to undo
                getattr(runtime.current().driver_for(host), self.undo)(instance_uuid)


class RebootGuest(Step):
    """Soft reboot; if the guest does not comply, fall back to a hard one.

    A reboot cannot be undone, so there is no revert: a failed reboot leaves
    the guest as the hypervisor left it and the prior vm_state is restored.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="reboot_guest", **kw)

    def execute(self, instance_uuid: str, host: str, hard: bool = False) -> str:
        drv = runtime.current().driver_for(host)
        if not hard:
            try:
                drv.reboot(instance_uuid, hard=False)
                return "soft"
            except (SoftRebootFailed, InvalidGuestState) as e:
                LOG.warning("%s; falling back to a hard reboot", e)
        drv.reboot(instance_uuid, hard=True)
        return "hard"
