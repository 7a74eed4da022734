"""Steps that move an instance between hosts: the destination claim, the
cold-migration driver calls, and the forward-only cleanups of confirm and
revert.

Every step names its hosts explicitly (`host` is the source, `dest_host` the
destination; both may be the same host for a resize in place), and finds what
it undoes from the instance uuid, never from a stored result.
"""

from __future__ import annotations

import contextlib
from typing import Any

from computeflow.states import VmState
from drivers.base import DiskKind, DiskSpec, Flavor, Held
from drivers.errors import GuestNotFound, NotSupported
from flows import runtime
from flows.errors import InsufficientCapacity
from flows.params import ClaimRow, DiskParams, FlavorParams, disk_of, disk_params
from flows.steps.base import Step
from flows.steps.instance import FinishOperation
from flows.steps.resources import flavor_disk_gb
from persistence import claims
from persistence.models import utcnow


class ClaimDestination(Step):
    """Claim the flavor the instance will have on the destination host.

    The claim is keyed by this operation, so a resize in place holds the old
    and the new flavor until confirm or revert releases one of them.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="claim_destination", **kw)

    def execute(self, operation_id: str, instance_uuid: str, dest_host: str, new_flavor: FlavorParams) -> None:
        disk_gb = flavor_disk_gb(new_flavor)
        with runtime.current().db.session() as s:
            if not claims.claim(
                s, operation_id, dest_host, instance_uuid, new_flavor["vcpus"], new_flavor["ram_mb"], disk_gb
            ):
                raise InsufficientCapacity(
                    dest_host, f"{new_flavor['vcpus']} vCPU, {new_flavor['ram_mb']} MB RAM, {disk_gb} GB disk requested"
                )

    def revert(self, operation_id: str, dest_host: str, **_: object) -> None:
        with runtime.current().db.session() as s:
            claims.release(s, operation_id, dest_host)


class MigrateDiskAndPowerOff(Step):
    """Stop the guest on the source and copy its disks to the destination.

    Revert puts the source copy back (and starts it if it ran): the driver
    keeps it until confirm_migration, so this is always possible.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="migrate_disk_and_power_off", provides="migrated_disks", **kw)

    def execute(self, instance_uuid: str, host: str, dest_host: str, new_flavor: FlavorParams) -> list[DiskParams]:
        disks = (
            runtime.current()
            .driver_for(host)
            .migrate_disk_and_power_off(instance_uuid, dest_host, Flavor(**new_flavor))
        )
        return [disk_params(d) for d in disks]

    def revert(self, instance_uuid: str, host: str, power_on: bool, **_: object) -> None:
        runtime.current().driver_for(host).finish_revert_migration(instance_uuid, power_on)


class FinishMigration(Step):
    """Set the copy up on the destination with the new flavor (started if it ran).

    Revert destroys what the destination has of the instance; the source copy
    is untouched (it is set aside by the driver, even on the same host).
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="finish_migration", **kw)

    def execute(
        self,
        instance_uuid: str,
        dest_host: str,
        migrated_disks: list[DiskParams],
        new_flavor: FlavorParams,
        power_on: bool,
    ) -> None:
        disks = [disk_of(d) for d in migrated_disks]
        runtime.current().driver_for(dest_host).finish_migration(instance_uuid, disks, Flavor(**new_flavor), power_on)

    def revert(self, instance_uuid: str, dest_host: str, **_: object) -> None:
        destroy_guest(dest_host, instance_uuid)


def remove_everything(host: str, instance_uuid: str) -> None:
    """Remove every trace of an instance on one host, whatever state a move or
    a repair left it in: the guest (stopped first), its ports and volume
    attachments, a kept or incoming migration copy, and its files."""
    drv = runtime.current().driver_for(host)
    with contextlib.suppress(GuestNotFound):
        drv.power_off(instance_uuid, timeout=0)
    drv.undefine_guest(instance_uuid)
    mine = [r for r in drv.host_report().resources if r.instance_uuid == instance_uuid]
    for r in mine:
        if r.kind is Held.PORT:
            drv.unplug_vif(instance_uuid, r.id)
        elif r.kind is Held.VOLUME:
            drv.detach_volume(instance_uuid, {"volume_id": r.id}, r.detail)
    if any(r.kind is Held.KEPT_COPY for r in mine):
        drv.confirm_migration(instance_uuid)
    drv.delete_instance_files(instance_uuid)


class RemoveOtherCopies(Step):
    """Forward-only (destroy): what a resize or a failed move left of the
    instance besides its guest: a copy kept on its own host, and everything
    on the other hosts its migration record names."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="remove_other_copies", **kw)

    def execute(self, instance_uuid: str, host: str, copy_hosts: list[str] | None = None) -> None:
        drv = runtime.current().driver_for(host)
        with contextlib.suppress(NotSupported):
            drv.confirm_migration(instance_uuid)
        for other in copy_hosts or []:
            if other != host:
                remove_everything(other, instance_uuid)


def destroy_guest(host: str, instance_uuid: str) -> None:
    """Stop, undefine and delete the files of an instance's guest on one host."""
    drv = runtime.current().driver_for(host)
    try:
        drv.power_off(instance_uuid, timeout=0)
    except GuestNotFound:
        pass
    drv.undefine_guest(instance_uuid)
    drv.delete_instance_files(instance_uuid)


class MarkResized(FinishOperation):
    """Show RESIZED (a persisted pause: confirm or revert come as operations)
    and stamp when, for the auto-confirm window."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(vm_state=VmState.RESIZED, **kw)

    def execute(
        self,
        operation_id: str,
        instance_uuid: str,
        prior_vm_state: str,
        prior_power_state: str,
        set_columns: dict[str, Any] | None = None,
    ) -> None:
        columns = dict(set_columns or {})
        meta = dict(columns["system_metadata"])
        meta["migration"] = {**meta["migration"], "resized_at": utcnow().isoformat()}
        columns["system_metadata"] = meta
        super().execute(operation_id, instance_uuid, prior_vm_state, prior_power_state, columns)


# -- forward-only (confirm, revert) ------------------------------------------
class ConfirmMigration(Step):
    """Forward-only: delete the source copy kept for a revert."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="confirm_migration", **kw)

    def execute(self, instance_uuid: str, source_host: str) -> None:
        runtime.current().driver_for(source_host).confirm_migration(instance_uuid)


class DestroyOnDestination(Step):
    """Forward-only: remove the destination's guest and disks (revert_resize)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="destroy_on_destination", **kw)

    def execute(self, instance_uuid: str, dest_host: str) -> None:
        destroy_guest(dest_host, instance_uuid)


class FinishRevertMigration(Step):
    """Forward-only: bring the source copy back (started if it ran before)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="finish_revert_migration", **kw)

    def execute(self, instance_uuid: str, source_host: str, power_on: bool) -> None:
        runtime.current().driver_for(source_host).finish_revert_migration(instance_uuid, power_on)


class ReleaseClaims(Step):
    """Forward-only: give back claims recorded at submission, as
    [operation_id, host, vcpus, ram_mb, disk_gb] rows in `claims_param`."""

    def __init__(self, name: str, claims_param: str, **kw: Any) -> None:
        super().__init__(name=name, rebind={"to_release": claims_param}, **kw)

    def execute(self, to_release: list[ClaimRow]) -> None:
        with runtime.current().db.session() as s:
            for op_id, host, *_ in to_release:
                claims.release(s, op_id, host)


class ReleaseSourceClaims(ReleaseClaims):
    """Evacuate: give back the dead host's claims; revert claims them again
    (nothing else is placed on a host marked down, so the room is there)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("release_source_claims", "source_claims", **kw)

    def revert(self, instance_uuid: str, to_release: list[ClaimRow], **_: object) -> None:
        with runtime.current().db.session() as s:
            for op_id, host, vcpus, ram_mb, disk_gb in to_release:
                if not claims.claim(s, op_id, host, instance_uuid, vcpus, ram_mb, disk_gb):
                    raise InsufficientCapacity(host, "cannot give the instance its claim back")


#: Step names spelled out so a search for one finds where it is made.
REUSE_DISK_STEP = {
    DiskKind.ROOT: "reuse_root_disk",
    DiskKind.EPHEMERAL: "reuse_ephemeral_disk",
    DiskKind.SWAP: "reuse_swap_disk",
}


class ReuseSharedDisk(Step):
    """Evacuate on shared storage: the disk is already there; register it with
    the destination (create_disk is create-if-absent) instead of re-creating it."""

    def __init__(self, kind: DiskKind, size_mb: int, **kw: Any) -> None:
        super().__init__(name=REUSE_DISK_STEP[kind], provides=f"{kind.value}_disk", **kw)
        self.kind = kind
        self.size_mb = size_mb

    def execute(self, instance_uuid: str, dest_host: str) -> DiskParams:
        disk = runtime.current().driver_for(dest_host).create_disk(instance_uuid, DiskSpec(self.kind, self.size_mb))
        return disk_params(disk)

    def revert(self, instance_uuid: str, dest_host: str, **_: object) -> None:
        runtime.current().driver_for(dest_host).delete_disk(instance_uuid, self.kind)
