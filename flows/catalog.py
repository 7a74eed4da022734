"""Every operation: its flow factory, version, parameters and the instance
states it accepts (the state machine users meet when they are refused).

The factory's import path is what taskflow stores in the flow detail; the
version is stored on the operation. When a flow changes shape its VERSION is
bumped, and an operation created by an older version is refused on resume.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flows import evacuate, reconcile, resize

from flows import (devices, destroy, guest_agent, live_migration, power, rebuild, rescue, snapshot,
                   spawn)


@dataclass(frozen=True)
class Param:
    """A user parameter of an operation; secret ones are stored encrypted."""

    name: str
    type: type
    default: object = None
    secret: bool = False
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class OperationKind:
    name: str
    factory: str
    version: int
    help: str
    #: vm_states the instance must be in (None: the operation creates it).
    accepts_vm_states: frozenset[str] | None
    params: tuple[Param, ...] = field(default=())
    #: CLI verb, when the name would clash (`resume` already means "finish orphans").
    cli_name: str | None = None
    #: Called at submission, in the transaction that takes the hold, as
    #: prepare(session, instance, values, operation_id) -> extra stored params.
    #: It resolves names (images, volumes) and raises InvalidRequest/NotFound
    #: before anything is written.
    prepare: Callable | None = None
    #: Driver methods the operation calls (the support matrix is built from it).
    uses: tuple[str, ...] = ()
    #: Past its hold it only goes forward: a cancel is refused once it runs.
    forward_only: bool = False
    #: What a resume does with an operation interrupted going forward when the
    #: hypervisor does not show the interrupted step done ("forward": run it
    #: again and go on; "revert": undo what was done). conductor/recovery.py.
    resume_direction: str = "forward"
    #: The atom whose start is the operation's point of no return (a flow
    #: that may be cancelled until then, e.g. live migration's switch-over):
    #: from its first RUNNING row on, a cancel no longer applies.
    no_return_step: str | None = None

    @property
    def verb(self) -> str:
        return self.cli_name or self.name.replace("_", "-")


def _power(name: str, accepts: set[str], help: str, *params: Param) -> OperationKind:
    undo = power.TRANSITIONS[name].undo
    uses = (name, undo) + (("get_info",) if power.TRANSITIONS[name].wait_running else ())
    return OperationKind(name, "flows.power.build", power.VERSION, help, frozenset(accepts), params,
                         uses=tuple(u for u in uses if u))


def _device(name: str, help: str, *params: Param) -> OperationKind:
    inverse = {"attach": "detach", "detach": "attach", "swap": "swap"}[name.split("_")[0]]
    uses = (name, inverse + "_" + name.split("_", 1)[1])
    return OperationKind(name, "flows.devices.build", devices.VERSION, help,
                         frozenset({"active", "stopped"}), params,
                         prepare=getattr(devices, f"prepare_{name}"), uses=tuple(dict.fromkeys(uses)))


_RUNNING_ISH = {"active", "paused", "suspended", "error"}
_TARGET_HOST = Param("target_host", str, help="destination host (default: the one with most free RAM)")
_COLD_MIGRATION = ("migrate_disk_and_power_off", "finish_migration", "finish_revert_migration",
                   "plug_vif", "unplug_vif", "power_off", "undefine_guest", "delete_instance_files",
                   "get_info")

CATALOG: dict[str, OperationKind] = {k.name: k for k in (
    OperationKind("spawn", "flows.spawn.build", spawn.VERSION, "create and boot an instance", None,
                  uses=("ensure_base_image", "create_disk", "delete_disk", "plug_vif", "unplug_vif",
                        "wait_for_vif_plugged", "define_guest", "undefine_guest", "power_on",
                        "power_off", "get_info")),
    OperationKind("destroy", "flows.destroy.build", destroy.VERSION,
                  "delete an instance (forward-only)",
                  frozenset({"active", "stopped", "error", "paused", "suspended", "soft_deleted",
                             "rescued"}),
                  prepare=destroy.prepare, forward_only=True,
                  no_return_step=destroy.NO_RETURN_STEP,
                  uses=("power_off", "undefine_guest", "unplug_vif", "delete_instance_files",
                        "confirm_migration", "host_report")),
    _power("power_off", _RUNNING_ISH, "stop the guest"),
    _power("power_on", {"stopped"}, "start a stopped guest"),
    _power("reboot", {"active", "stopped", "error"},
           "restart the guest (soft, falling back to hard)",
           Param("hard", bool, False, help="skip the soft attempt")),
    _power("pause", {"active"}, "freeze the guest in memory"),
    _power("unpause", {"paused"}, "continue a paused guest"),
    _power("suspend", {"active"}, "save the guest's memory to disk and stop it"),
    OperationKind("resume", "flows.power.build", power.VERSION, "restore a suspended guest",
                  frozenset({"suspended"}), cli_name="unsuspend",
                  uses=("resume", "suspend", "get_info")),
    _power("soft_delete", {"active", "stopped", "error"}, "stop the guest, keeping it restorable"),
    _power("restore", {"soft_deleted"}, "bring back a soft-deleted instance"),
    OperationKind("rescue", "flows.rescue.build", rescue.VERSION,
                  "boot from a rescue image, keeping the original disks",
                  frozenset({"active", "stopped", "error"}),
                  (Param("image", str, help="rescue image (default: the instance's own)"),),
                  prepare=rescue.prepare_rescue, uses=("rescue", "unrescue", "get_info")),
    OperationKind("unrescue", "flows.rescue.build", rescue.VERSION,
                  "boot from the original disk again", frozenset({"rescued"}),
                  prepare=rescue.prepare_unrescue, uses=("unrescue", "rescue", "get_info")),
    OperationKind("snapshot", "flows.snapshot.build", snapshot.VERSION,
                  "save the root disk as a new image in the local image store",
                  frozenset({"active", "stopped"}),
                  (Param("image_name", str, required=True, help="name of the new image"),),
                  prepare=snapshot.prepare, uses=("snapshot",)),
    OperationKind("rebuild", "flows.rebuild.build", rebuild.VERSION,
                  "re-create the root disk from an image and boot",
                  frozenset({"active", "stopped", "error"}),
                  (Param("image", str, required=True, help="image to rebuild from"),
                   Param("preserve_ephemeral", bool, False, help="keep the ephemeral disk's data")),
                  prepare=rebuild.prepare, uses=("ensure_base_image", "rebuild", "get_info")),
    OperationKind("resize", "flows.resize.build", resize.VERSION,
                  "move to another flavor (and host); waits in resized for confirm or revert",
                  frozenset({"active", "stopped"}),
                  (Param("flavor", str, required=True, help="the new flavor"),
                   _TARGET_HOST),
                  prepare=resize.prepare_resize, uses=_COLD_MIGRATION),
    OperationKind("migrate", "flows.resize.build", resize.VERSION,
                  "move to another host, stopped (cold); waits in resized for confirm or revert",
                  frozenset({"active", "stopped"}), (_TARGET_HOST,),
                  prepare=resize.prepare_migrate, uses=_COLD_MIGRATION),
    OperationKind("confirm_resize", "flows.resize.build", resize.VERSION,
                  "keep a resize or migration: delete the source copy (forward-only)",
                  frozenset({"resized", "error"}), prepare=resize.prepare_confirm,
                  forward_only=True, uses=("confirm_migration",)),
    OperationKind("revert_resize", "flows.resize.build", resize.VERSION,
                  "undo a resize or migration: back to the source host and old flavor "
                  "(forward-only)",
                  frozenset({"resized", "error"}), prepare=resize.prepare_revert,
                  forward_only=True, uses=("power_off", "undefine_guest", "delete_instance_files", "unplug_vif",
                        "finish_revert_migration")),
    OperationKind("evacuate", "flows.evacuate.build", evacuate.VERSION,
                  "rebuild an instance of a host marked down on another host",
                  frozenset({"active", "stopped", "error"}), (_TARGET_HOST,),
                  prepare=evacuate.prepare,
                  uses=("check_instance_shared_storage_local", "check_instance_shared_storage_remote",
                        "check_instance_shared_storage_cleanup", "ensure_base_image", "create_disk",
                        "delete_disk", "plug_vif", "unplug_vif", "define_guest", "undefine_guest",
                        "power_on", "power_off", "get_info")),
    OperationKind("set_admin_password", "flows.guest_agent.build", guest_agent.VERSION,
                  "set the guest's admin password", frozenset({"active"}),
                  (Param("password", str, secret=True, required=True, help="the new password"),),
                  uses=("set_admin_password",)),
    OperationKind("inject_file", "flows.guest_agent.build", guest_agent.VERSION,
                  "write a file into the guest", frozenset({"active"}),
                  (Param("path", str, required=True, help="absolute path in the guest"),
                   Param("contents", str, secret=True, required=True, help="the file's contents")),
                  prepare=guest_agent.prepare_inject_file, uses=("inject_file",)),
    OperationKind("change_metadata", "flows.guest_agent.build", guest_agent.VERSION,
                  "set or remove instance metadata keys",
                  frozenset({"active", "stopped", "paused", "suspended", "rescued"}),
                  (Param("set", list, help="KEY=VALUE to set"),
                   Param("unset", list, help="KEY to remove")),
                  prepare=guest_agent.prepare_metadata, uses=("change_instance_metadata",)),
    _device("attach_volume", "attach a volume to the guest",
            Param("volume_id", str, required=True, help="the volume"),
            Param("mountpoint", str, help="device name (default: the next free /dev/vdX)")),
    _device("detach_volume", "detach a volume from the guest",
            Param("volume_id", str, required=True, help="the volume")),
    _device("swap_volume", "replace an attached volume by another at the same mountpoint",
            Param("volume_id", str, required=True, help="the attached volume"),
            Param("new_volume_id", str, required=True, help="the volume to put in its place")),
    _device("attach_interface", "add a network interface to the guest",
            Param("network", str, "default", help="network of the new interface")),
    _device("detach_interface", "remove a network interface from the guest",
            Param("port_id", str, required=True, help="the interface's id")),
    OperationKind("reconcile", "flows.reconcile.build", reconcile.VERSION,
                  "bring hosts and database back in agreement (computeflow reconcile --apply; "
                  "forward-only)", None, forward_only=True, no_return_step=reconcile.NO_RETURN_STEP,
                  uses=("host_report", "get_info", "power_off", "undefine_guest", "plug_vif",
                        "unplug_vif", "detach_volume", "confirm_migration",
                        "finish_revert_migration", "delete_instance_files")),
    OperationKind("live_migration", "flows.live_migration.build", live_migration.VERSION,
                  "move a running instance to another host without stopping it",
                  frozenset({"active", "paused"}),
                  (Param("target_host", str, required=True, help="host to move it to"),),
                  prepare=live_migration.prepare, uses=live_migration.USES,
                  no_return_step=live_migration.NO_RETURN_STEP),
)}


def get(kind: str) -> OperationKind:
    try:
        return CATALOG[kind]
    except KeyError:
        raise KeyError(f"unknown operation {kind!r} (known: {', '.join(sorted(CATALOG))})") from None


def instance_operations() -> list[OperationKind]:
    """Operations on an existing instance, in catalogue order."""
    return [k for k in CATALOG.values() if k.accepts_vm_states is not None]
