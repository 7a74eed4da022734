"""The hypervisor driver contract.

It covers the menu of OpenStack Nova's ComputeDriver (nova/virt/driver.py), cut
into the small, individually reversible calls that computeflow's steps make:
where Nova has one `spawn`, we have create_disk, plug_vif, define_guest and
power_on, each idempotent, so a step that ran twice (it was RUNNING when the
process died) does no harm.

Every method a driver does not implement raises `NotSupported`; the support
matrix in the docs is derived from which methods a driver overrides.

This file is longer than our usual limit because it is the whole contract:
one place to read what a driver must do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from drivers.errors import NotSupported


class PowerState(str, enum.Enum):
    NOSTATE = "nostate"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    SUSPENDED = "suspended"


class DiskKind(str, enum.Enum):
    ROOT = "root"
    EPHEMERAL = "ephemeral"
    SWAP = "swap"


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    root_gb: int
    ephemeral_gb: int = 0
    swap_mb: int = 0


@dataclass(frozen=True)
class Image:
    name: str
    disk_format: str
    size_mb: int
    path: str | None = None


@dataclass(frozen=True)
class DiskSpec:
    """A disk to create for an instance; `image` is set for the root disk."""

    kind: DiskKind
    size_mb: int
    image: Image | None = None
    fs_format: str | None = None


@dataclass(frozen=True)
class Disk:
    """A disk that exists on a host."""

    kind: DiskKind
    path: str
    size_mb: int
    backing_file: str | None = None
    preallocated: bool = False


@dataclass(frozen=True)
class Vif:
    id: str
    mac: str
    network: str = "default"


@dataclass(frozen=True)
class GuestSpec:
    """Everything define_guest needs; secrets arrive already decrypted."""

    instance_uuid: str
    name: str
    flavor: Flavor
    disks: tuple[Disk, ...]
    vifs: tuple[Vif, ...] = ()
    admin_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GuestInfo:
    state: PowerState
    vcpus: int
    memory_mb: int
    cpu_time_ns: int = 0


@dataclass(frozen=True)
class HostResources:
    vcpus: int
    ram_mb: int
    disk_gb: int
    hypervisor: str
    hypervisor_version: int = 0


@dataclass(frozen=True)
class LifecycleEvent:
    """Something that happened to a guest without being asked (it stopped...)."""

    instance_uuid: str
    power_state: PowerState
    host: str


@dataclass(frozen=True)
class Inventory:
    """Every resource a driver holds on its host; a leak shows up here."""

    guests: tuple[str, ...]
    disks: tuple[str, ...]
    ports: tuple[str, ...]
    base_images: tuple[str, ...] = ()
    #: Volumes attached to a guest of this host (by volume id).
    volumes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.guests or self.disks or self.ports or self.volumes)


class Held(str, enum.Enum):
    """What a host can hold for an instance (HostReport)."""

    GUEST = "guest"
    DISK = "disk"
    PORT = "port"
    VOLUME = "volume"
    #: A resize/migration source copy kept for a revert until confirm_migration.
    KEPT_COPY = "kept-copy"
    #: A resize/migration copy that arrived and waits for finish_migration.
    INCOMING_COPY = "incoming-copy"


@dataclass(frozen=True)
class HeldResource:
    """One thing a host holds, and the instance it provably belongs to.

    `instance_uuid` is None when the resource does not carry computeflow's
    marks (a domain without our metadata, a file outside an instance
    directory): reconciliation reports such a resource and never touches it.
    """

    kind: Held
    id: str
    instance_uuid: str | None
    #: Guests only: the power state the hypervisor reports.
    power_state: PowerState | None = None
    #: What an operator recognises it by (domain name, mountpoint, ...).
    detail: str = ""


@dataclass(frozen=True)
class HostReport:
    """Everything a host holds, by instance: what reconciliation compares with
    the database (drivers.base.ComputeDriver.host_report)."""

    host: str
    resources: tuple[HeldResource, ...]

    def by_instance(self) -> dict[str | None, list[HeldResource]]:
        found: dict[str | None, list[HeldResource]] = {}
        for r in self.resources:
            found.setdefault(r.instance_uuid, []).append(r)
        return found


EventCallback = Callable[[LifecycleEvent], None]


class ComputeDriver:
    """Base driver: every operation raises NotSupported until a driver overrides it.

    Idempotency contract for every mutating method: calling it again after it
    succeeded (or after it was interrupted) converges to the same end state,
    and undoing something already undone is a no-op.
    """

    name = "base"

    def __init__(self, host: str) -> None:
        self.host = host
        self._listeners: list[EventCallback] = []

    def _unsupported(self, method: str) -> NoReturn:
        raise NotSupported(self.name, method)

    # -- host ---------------------------------------------------------------
    def init_host(self) -> None:
        """Prepare the host for work (connect, recover state)."""

    def cleanup_host(self) -> None:
        """Release what init_host acquired."""

    def get_available_resource(self) -> HostResources:
        """The host's total capacity as the hypervisor reports it."""
        self._unsupported("get_available_resource")

    def get_host_uptime(self) -> str:
        self._unsupported("get_host_uptime")

    def host_power_action(self, action: str) -> str:
        """Reboot, shut down or start the host itself."""
        self._unsupported("host_power_action")

    def host_maintenance_mode(self, enabled: bool) -> str:
        self._unsupported("host_maintenance_mode")

    def set_host_enabled(self, enabled: bool) -> str:
        self._unsupported("set_host_enabled")

    def get_host_ip_addr(self) -> str:
        self._unsupported("get_host_ip_addr")

    def get_volume_connector(self, instance_uuid: str) -> dict[str, Any]:
        """What a storage backend needs to export a volume to this host."""
        self._unsupported("get_volume_connector")

    def inventory(self) -> Inventory:
        """Every guest, disk and port this driver holds on its host."""
        self._unsupported("inventory")

    def host_report(self) -> HostReport:
        """Every guest (with its power state), disk, port, volume attachment and
        kept or incoming migration copy on this host, each with the instance it
        belongs to; read-only. Things not made by computeflow are listed with
        no instance (see HeldResource)."""
        self._unsupported("host_report")

    # -- queries ------------------------------------------------------------
    def get_info(self, instance_uuid: str) -> GuestInfo:
        """Power state and size of a guest; GuestNotFound if there is none."""
        self._unsupported("get_info")

    def instance_exists(self, instance_uuid: str) -> bool:
        return instance_uuid in self.list_instance_uuids()

    def list_instance_uuids(self) -> list[str]:
        self._unsupported("list_instance_uuids")

    def get_num_instances(self) -> int:
        return len(self.list_instance_uuids())

    def get_console_output(self, instance_uuid: str) -> str:
        self._unsupported("get_console_output")

    def get_diagnostics(self, instance_uuid: str) -> dict[str, Any]:
        self._unsupported("get_diagnostics")

    def get_instance_disk_info(self, instance_uuid: str) -> list[Disk]:
        self._unsupported("get_instance_disk_info")

    def estimate_instance_overhead(self, flavor: Flavor) -> dict[str, Any]:
        """Host memory/disk a guest costs beyond its flavor."""
        return {"memory_mb": 0, "disk_gb": 0}

    # -- spawn's pieces -----------------------------------------------------
    def ensure_base_image(self, image: Image) -> str:
        """Make the image available in the host's base-image cache; return its path."""
        self._unsupported("ensure_base_image")

    def create_disk(self, instance_uuid: str, spec: DiskSpec) -> Disk:
        """Create one instance disk (COW over the base image when configured)."""
        self._unsupported("create_disk")

    def delete_disk(self, instance_uuid: str, kind: DiskKind) -> None:
        """Delete one instance disk; no-op if it does not exist."""
        self._unsupported("delete_disk")

    def plug_vif(self, instance_uuid: str, vif: Vif) -> None:
        """Create the host side of a virtual interface."""
        self._unsupported("plug_vif")

    def unplug_vif(self, instance_uuid: str, vif_id: str) -> None:
        self._unsupported("unplug_vif")

    def wait_for_vif_plugged(self, instance_uuid: str, vif_ids: list[str], timeout: float) -> bool:
        """Wait until the network reports every vif plugged; False on timeout."""
        self._unsupported("wait_for_vif_plugged")

    def define_guest(self, spec: GuestSpec) -> None:
        """Register the guest's configuration with the hypervisor (not started)."""
        self._unsupported("define_guest")

    def undefine_guest(self, instance_uuid: str) -> None:
        """Remove the guest's configuration; it must be stopped first."""
        self._unsupported("undefine_guest")

    def delete_instance_files(self, instance_uuid: str) -> None:
        """Remove everything the instance left in the instances path."""
        self._unsupported("delete_instance_files")

    def instance_on_disk(self, instance_uuid: str) -> bool:
        """Whether the instance's files are on storage this host shares."""
        self._unsupported("instance_on_disk")

    # -- power --------------------------------------------------------------
    def power_on(self, instance_uuid: str) -> None:
        self._unsupported("power_on")

    def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        """Stop the guest: gracefully within `timeout` seconds, then forcibly."""
        self._unsupported("power_off")

    def reboot(self, instance_uuid: str, hard: bool) -> None:
        self._unsupported("reboot")

    def pause(self, instance_uuid: str) -> None:
        self._unsupported("pause")

    def unpause(self, instance_uuid: str) -> None:
        self._unsupported("unpause")

    def suspend(self, instance_uuid: str) -> None:
        """Save the guest's memory to disk and stop it."""
        self._unsupported("suspend")

    def resume(self, instance_uuid: str) -> None:
        self._unsupported("resume")

    def resume_state_on_host_boot(self, instance_uuid: str) -> None:
        """Bring a guest back to its recorded state after the host rebooted."""
        self._unsupported("resume_state_on_host_boot")

    def soft_delete(self, instance_uuid: str) -> None:
        self._unsupported("soft_delete")

    def restore(self, instance_uuid: str) -> None:
        self._unsupported("restore")

    def poll_rebooting_instances(self, timeout: float, instance_uuids: list[str]) -> list[str]:
        """Instances stuck rebooting for longer than `timeout`."""
        self._unsupported("poll_rebooting_instances")

    # -- rescue, rebuild, snapshot -----------------------------------------
    def rescue(self, instance_uuid: str, rescue_image: Image) -> None:
        """Boot from a rescue image, keeping the original disk attached."""
        self._unsupported("rescue")

    def unrescue(self, instance_uuid: str) -> None:
        self._unsupported("unrescue")

    def set_bootable(self, instance_uuid: str, bootable: bool) -> None:
        self._unsupported("set_bootable")

    def snapshot(self, instance_uuid: str, image_path: str) -> Image:
        """Write the root disk's contents to `image_path`."""
        self._unsupported("snapshot")

    def rebuild(self, instance_uuid: str, image: Image, preserve_ephemeral: bool) -> None:
        self._unsupported("rebuild")

    # -- resize and cold migration -----------------------------------------
    def migrate_disk_and_power_off(self, instance_uuid: str, dest_host: str, flavor: Flavor) -> list[Disk]:
        self._unsupported("migrate_disk_and_power_off")

    def finish_migration(self, instance_uuid: str, disks: list[Disk], flavor: Flavor, power_on: bool) -> None:
        self._unsupported("finish_migration")

    def confirm_migration(self, instance_uuid: str) -> None:
        """Delete what the source kept for a possible revert."""
        self._unsupported("confirm_migration")

    def finish_revert_migration(self, instance_uuid: str, power_on: bool) -> None:
        self._unsupported("finish_revert_migration")

    # -- live migration -----------------------------------------------------
    def check_can_live_migrate_destination(self, instance_uuid: str, block_migration: bool) -> dict[str, Any]:
        self._unsupported("check_can_live_migrate_destination")

    def check_can_live_migrate_destination_cleanup(self, dest_check: dict[str, Any]) -> None:
        self._unsupported("check_can_live_migrate_destination_cleanup")

    def check_can_live_migrate_source(self, instance_uuid: str, dest_check: dict[str, Any]) -> dict[str, Any]:
        self._unsupported("check_can_live_migrate_source")

    def pre_live_migration(self, instance_uuid: str, migrate_data: dict[str, Any]) -> dict[str, Any]:
        self._unsupported("pre_live_migration")

    def live_migration(
        self,
        instance_uuid: str,
        dest_host: str,
        migrate_data: dict[str, Any],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._unsupported("live_migration")

    def live_migration_abort(self, instance_uuid: str) -> None:
        self._unsupported("live_migration_abort")

    def live_migration_force_complete(self, instance_uuid: str) -> None:
        self._unsupported("live_migration_force_complete")

    def live_migration_force_complete_is_final(self, migrate_data: dict[str, Any]) -> bool:
        """Whether force-complete of this migration moves the guest to the destination at
        once, beyond any rollback (libvirt's post-copy): the flow records the switch-over
        before asking for it. False where force-complete only makes switching over likelier."""
        return False

    def rollback_live_migration_at_destination(self, instance_uuid: str, destroy_disks: bool) -> None:
        self._unsupported("rollback_live_migration_at_destination")

    def post_live_migration(self, instance_uuid: str, migrate_data: dict[str, Any]) -> None:
        self._unsupported("post_live_migration")

    def post_live_migration_at_source(self, instance_uuid: str) -> None:
        self._unsupported("post_live_migration_at_source")

    def post_live_migration_at_destination(self, instance_uuid: str) -> None:
        self._unsupported("post_live_migration_at_destination")

    def check_instance_shared_storage_local(self, instance_uuid: str) -> dict[str, Any] | None:
        self._unsupported("check_instance_shared_storage_local")

    def check_instance_shared_storage_remote(self, data: dict[str, Any]) -> bool:
        self._unsupported("check_instance_shared_storage_remote")

    def check_instance_shared_storage_cleanup(self, data: dict[str, Any]) -> None:
        self._unsupported("check_instance_shared_storage_cleanup")

    # -- devices ------------------------------------------------------------
    def attach_volume(self, instance_uuid: str, connection_info: dict[str, Any], mountpoint: str) -> None:
        self._unsupported("attach_volume")

    def detach_volume(self, instance_uuid: str, connection_info: dict[str, Any], mountpoint: str) -> None:
        self._unsupported("detach_volume")

    def swap_volume(
        self, instance_uuid: str, old_info: dict[str, Any], new_info: dict[str, Any], mountpoint: str
    ) -> None:
        self._unsupported("swap_volume")

    def volume_snapshot_create(self, instance_uuid: str, volume_id: str, info: dict[str, Any]) -> None:
        self._unsupported("volume_snapshot_create")

    def volume_snapshot_delete(self, instance_uuid: str, volume_id: str, snapshot_id: str) -> None:
        self._unsupported("volume_snapshot_delete")

    def attach_interface(self, instance_uuid: str, vif: Vif) -> None:
        self._unsupported("attach_interface")

    def detach_interface(self, instance_uuid: str, vif_id: str) -> None:
        self._unsupported("detach_interface")

    # -- guest agent --------------------------------------------------------
    def set_admin_password(self, instance_uuid: str, password: str) -> None:
        self._unsupported("set_admin_password")

    def inject_file(self, instance_uuid: str, path: str, contents: bytes) -> None:
        self._unsupported("inject_file")

    def change_instance_metadata(self, instance_uuid: str, changes: dict[str, str | None]) -> None:
        self._unsupported("change_instance_metadata")

    def inject_network_info(self, instance_uuid: str, vifs: list[Vif]) -> None:
        self._unsupported("inject_network_info")

    # -- image cache, aggregates, firewall (not used by computeflow's flows) --
    def manage_image_cache(self, in_use: list[str]) -> None:
        self._unsupported("manage_image_cache")

    def add_to_aggregate(self, aggregate: str) -> None:
        self._unsupported("add_to_aggregate")

    def remove_from_aggregate(self, aggregate: str) -> None:
        self._unsupported("remove_from_aggregate")

    def ensure_filtering_rules_for_instance(self, instance_uuid: str, vifs: list[Vif]) -> None:
        self._unsupported("ensure_filtering_rules_for_instance")

    def unfilter_instance(self, instance_uuid: str, vifs: list[Vif]) -> None:
        self._unsupported("unfilter_instance")

    # -- events -------------------------------------------------------------
    def register_event_listener(self, callback: EventCallback) -> None:
        """Lifecycle events of guests on this host will be passed to `callback`."""
        self._listeners.append(callback)

    def emit_event(self, event: LifecycleEvent) -> None:
        for listener in list(self._listeners):
            listener(event)


def supported_methods(driver_class: type[ComputeDriver]) -> set[str]:
    """Names of the contract methods a driver class implements itself."""
    return {
        name
        for name, member in vars(ComputeDriver).items()
        if callable(member) and not name.startswith("_") and getattr(driver_class, name) is not member
    }
