"""Steps that bring a host and the database back in agreement (`computeflow
reconcile --apply`).

Each step carries one action of a reconciliation plan. The plan was computed
from a probe that may be stale by the time the step runs (or runs again after
a crash), so every step looks again before it acts and does nothing when the
world already agrees: that makes them idempotent and safe to run twice. They
are forward-only (retried, never undone): what they remove was nobody's, and
what they record is what the hypervisor says.

A step never removes a resource that does not carry computeflow's marks:
drivers report such resources with no instance, and they never reach a plan.
"""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from computeflow.states import VmState
from drivers.base import ComputeDriver, PowerState, Vif
from drivers.errors import GuestNotFound
from flows import runtime
from flows.errors import InvalidRequest
from flows.steps.base import Step
from flows.steps.migration import remove_everything
from persistence import claims, events, instances, operations
from persistence.models import Claim, Host, Instance, Operation

#: vm_state that follows a power state the hypervisor reports, for the
#: vm_states that only mean "how the guest runs" (others keep theirs).
_VM_STATE_OF_POWER = {
    PowerState.RUNNING: VmState.ACTIVE,
    PowerState.SHUTDOWN: VmState.STOPPED,
    PowerState.CRASHED: VmState.STOPPED,
    PowerState.PAUSED: VmState.PAUSED,
    PowerState.SUSPENDED: VmState.SUSPENDED,
}
_POWER_DRIVEN_VM_STATES = frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED})


def vm_state_for(vm_state: str, power: PowerState) -> str:
    """The vm_state an instance shows once its power state is `power`."""
    if vm_state in _POWER_DRIVEN_VM_STATES:
        return _VM_STATE_OF_POWER.get(power, vm_state)
    return vm_state


def expected_hosts(inst: Instance) -> set[str]:
    """Hosts where the database says this instance may have a guest or copy."""
    places = {inst.host} if inst.host else set()
    mig = (inst.system_metadata or {}).get("migration")
    if mig:
        places |= {mig["source_host"], mig["dest_host"]}
    return places


class ReconcileStep(Step):
    """A reconciliation action on one host (or on the records, host None)."""

    def __init__(self, name: str, action: dict[str, Any], **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.action = action

    @property
    def host(self) -> str:
        host: str | None = self.action["host"]
        if host is None:  # a records-only action (release_stale_hold) never asks
            raise ValueError(f"reconcile action {self.action['action']} names no host")
        return host

    def driver(self) -> ComputeDriver:
        return runtime.current().driver_for(self.host)


class RemoveFromHost(ReconcileStep):
    """Remove everything of one instance on one host: its guest (stopped
    first), ports, volume attachments, kept or incoming copy and files.

    Refused if the database now places the instance on this host: the plan
    saw a stray copy, and a copy in use is never removed.
    """

    def execute(self, operation_id: str) -> None:
        uuid = self.action["instance_uuid"]
        with runtime.current().db.session() as s:
            inst = instances.get(s, uuid)
            if inst is not None and inst.live_marker == "" and self.host in expected_hosts(inst):
                raise InvalidRequest(
                    f"instance {inst.name} now lives on {self.host}: its resources there are not removed"
                )
            if inst is not None and inst.held_by not in (None, operation_id):
                raise InvalidRequest(
                    f"instance {inst.name} is held by operation {inst.held_by}: its resources are not removed"
                )
        remove_everything(self.host, uuid)


class UnplugPort(ReconcileStep):
    def execute(self) -> None:
        self.driver().unplug_vif(self.action["instance_uuid"], self.action["vif_id"])


class PlugPort(ReconcileStep):
    def execute(self) -> None:
        vif = self.action["vif"]
        self.driver().plug_vif(self.action["instance_uuid"], Vif(vif["id"], vif["mac"], vif.get("network", "default")))


class DetachVolume(ReconcileStep):
    def execute(self) -> None:
        self.driver().detach_volume(
            self.action["instance_uuid"], {"volume_id": self.action["volume_id"]}, self.action.get("mountpoint", "")
        )


class DiscardKeptCopy(ReconcileStep):
    """Delete a resize/migration source copy that no resize needs any more."""

    def execute(self) -> None:
        self.driver().confirm_migration(self.action["instance_uuid"])


class _OnHeldInstance(ReconcileStep):
    """An action that changes the instance record: it runs under the
    operation's hold (take_hold comes first in the flow)."""

    def record(self, operation_id: str, event: str, power: PowerState | None, **columns: object) -> None:
        uuid = self.action["instance_uuid"]
        with runtime.current().db.session() as s:
            if not instances.update_if_held(s, uuid, operation_id, **columns):
                raise InvalidRequest(f"instance {uuid} is not held by {operation_id}")
            events.record(s, uuid, self.host, event, (power or PowerState.NOSTATE).value)


class RestoreKeptCopy(_OnHeldInstance):
    """The instance's guest is gone but its resize source copy is here (a
    failed move cleaned up by hand): put the copy back, stopped."""

    def execute(self, operation_id: str) -> None:
        uuid = self.action["instance_uuid"]
        drv = self.driver()
        with contextlib.suppress(GuestNotFound):
            drv.get_info(uuid)
            return self.record(
                operation_id,
                "reconcile:restored",
                PowerState.SHUTDOWN,
                vm_state=VmState.STOPPED,
                power_state=PowerState.SHUTDOWN.value,
            )
        drv.finish_revert_migration(uuid, power_on=False)
        power = drv.get_info(uuid).state
        self.record(
            operation_id,
            "reconcile:restored",
            power,
            vm_state=_VM_STATE_OF_POWER.get(power, VmState.STOPPED),
            power_state=power.value,
        )


class RecordPowerState(_OnHeldInstance):
    """Record the power state the hypervisor reports now (the hypervisor is
    the truth for what runs, as in Nova's power-state sync)."""

    def execute(self, operation_id: str) -> None:
        uuid = self.action["instance_uuid"]
        power = self.driver().get_info(uuid).state
        with runtime.current().db.session() as s:
            inst = instances.get(s, uuid)
            if inst is None:  # held by this operation: a record cannot go while held
                raise LookupError(f"instance {uuid} is gone although operation {operation_id} holds it")
            vm_state = vm_state_for(inst.vm_state, power)
        self.record(operation_id, "reconcile:power-state", power, power_state=power.value, vm_state=vm_state)


class MarkGuestMissing(_OnHeldInstance):
    """The instance has no guest anywhere: show it in error (destroy or
    rebuild are the operator's next step). Nothing is recorded if the guest
    is back."""

    def execute(self, operation_id: str) -> None:
        uuid = self.action["instance_uuid"]
        try:
            self.driver().get_info(uuid)
            return
        except GuestNotFound:
            pass
        self.record(
            operation_id, "reconcile:guest-missing", None, vm_state=VmState.ERROR, power_state=PowerState.NOSTATE.value
        )


class ReleaseStaleClaim(ReconcileStep):
    """Give back a claim that no running operation and no instance on that
    host needs."""

    def execute(self) -> None:
        op_id, host = self.action["claim_operation"], self.action["claim_host"]
        with runtime.current().db.session() as s:
            c = s.get(Claim, (op_id, host))
            if c is None:
                return
            op = operations.get(s, op_id)
            if op is not None and op.state in operations.ACTIVE_STATES:
                raise InvalidRequest(f"claim of {op_id} on {host}: its operation is running again")
            inst = instances.get(s, c.instance_uuid)
            if inst is not None and inst.live_marker == "" and host in expected_hosts(inst):
                raise InvalidRequest(f"claim of {op_id} on {host}: instance {inst.name} needs it")
            claims.release(s, op_id, host)


class ReleaseStaleHold(ReconcileStep):
    """Drop a hold whose operation ended (or never existed); only if that very
    operation still holds the instance."""

    def execute(self) -> None:
        uuid, holder = self.action["instance_uuid"], self.action["held_by"]
        with runtime.current().db.session() as s:
            op = s.get(Operation, holder)
            if op is not None and op.state in operations.ACTIVE_STATES:
                raise InvalidRequest(f"operation {holder} holding {uuid} is running again")
            s.execute(
                sa.update(Instance)
                .where(Instance.uuid == uuid, Instance.held_by == holder)
                .values(held_by=None, task_state=None)
            )


class RecountUsage(ReconcileStep):
    """Set a host's usage counters to the sum of its claims, in one UPDATE."""

    def execute(self) -> None:
        host = self.action["host"]

        def total(col: orm.InstrumentedAttribute[int]) -> sa.ScalarSelect[int]:
            return sa.select(sa.func.coalesce(sa.func.sum(col), 0)).where(Claim.host == host).scalar_subquery()

        with runtime.current().db.session() as s:
            s.execute(
                sa.update(Host)
                .where(Host.name == host)
                .values(
                    used_vcpus=total(Claim.vcpus), used_ram_mb=total(Claim.ram_mb), used_disk_gb=total(Claim.disk_gb)
                )
            )


class ReleaseHeldInstance(Step):
    """Last step of an instance's reconciliation: drop the hold, keeping the
    states the actions recorded."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="release_hold", **kw)

    def execute(self, operation_id: str, instance_uuid: str) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(s, instance_uuid, operation_id, task_state=None)


#: Action name -> step class; the plan (conductor/reconcile_repairs.py) names these.
ACTIONS: dict[str, type[ReconcileStep]] = {
    "remove_from_host": RemoveFromHost,
    "unplug_port": UnplugPort,
    "plug_port": PlugPort,
    "detach_volume": DetachVolume,
    "discard_kept_copy": DiscardKeptCopy,
    "restore_kept_copy": RestoreKeptCopy,
    "record_power_state": RecordPowerState,
    "mark_guest_missing": MarkGuestMissing,
    "release_stale_claim": ReleaseStaleClaim,
    "release_stale_hold": ReleaseStaleHold,
    "recount_usage": RecountUsage,
}
#: Actions that change an instance's record: their operation holds it.
HOLDING_ACTIONS = frozenset(
    {
        "restore_kept_copy",
        "record_power_state",
        "mark_guest_missing",
        "plug_port",
        "unplug_port",
        "detach_volume",
        "discard_kept_copy",
    }
)
