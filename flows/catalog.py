"""Every operation: its flow factory, version, parameters and the instance
states it accepts (the state machine users meet when they are refused).

The factory's import path is what taskflow stores in the flow detail; the
version is stored on the operation. When a flow changes shape its VERSION is
bumped, and an operation created by an older version is refused on resume.

One module (~510 lines) on purpose: most of it is the one table `CATALOG`,
read top to bottom as the list of what computeflow can do, with the few
helpers that build and query its entries; split, a reader would look in
several files for the one answer "which operations are there, and when is
each refused".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from computeflow.states import VmState
from flows import evacuate, reconcile, resize

from flows import devices, destroy, guest_agent, live_migration, power, rebuild, rescue, snapshot, spawn
from flows.prepare import Prepare
from flows.steps.reconcile import ACTIONS as RECONCILE_ACTIONS

#: At the end of a step name in OperationKind.steps: any index (plug_vif_0, plug_vif_1, ...).
INDEX = "_N"


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
    prepare: Prepare | None = None
    #: Driver methods the operation calls (the support matrix is built from it).
    uses: tuple[str, ...] = ()
    #: Names of the steps its flow may have, in flow order; INDEX ends an indexed
    #: one. Fault specs ([fake] faults) are checked against them; a test builds
    #: every flow and compares.
    steps: tuple[str, ...] = ()
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
    wait = ("wait_running",) if power.TRANSITIONS[name].wait_running else ()
    return OperationKind(
        name,
        "flows.power.build",
        power.VERSION,
        help,
        frozenset(accepts),
        params,
        uses=tuple(u for u in uses if u),
        steps=("take_hold", f"{name}_guest", *wait, "mark_done"),
    )


def _device(name: str, help: str, *params: Param) -> OperationKind:
    inverse = {"attach": "detach", "detach": "attach", "swap": "swap"}[name.split("_")[0]]
    uses = (name, inverse + "_" + name.split("_", 1)[1])
    return OperationKind(
        name,
        "flows.devices.build",
        devices.VERSION,
        help,
        frozenset({VmState.ACTIVE, VmState.STOPPED}),
        params,
        prepare=getattr(devices, f"prepare_{name}"),
        uses=tuple(dict.fromkeys(uses)),
        steps=("take_hold", name, "mark_done"),
    )


_RUNNING_ISH = {VmState.ACTIVE, VmState.PAUSED, VmState.SUSPENDED, VmState.ERROR}
_TARGET_HOST = Param("target_host", str, help="destination host (default: the one with most free RAM)")
_COLD_MIGRATION = (
    "migrate_disk_and_power_off",
    "finish_migration",
    "finish_revert_migration",
    "plug_vif",
    "unplug_vif",
    "power_off",
    "undefine_guest",
    "delete_instance_files",
    "get_info",
)
_MOVE_STEPS = (
    "take_hold",
    "claim_destination",
    "migrate_disk_and_power_off",
    "plug_vif_N",
    "finish_migration",
    "wait_running",
    "mark_done",
)
_GUEST_MODE = ("take_hold", "{}_guest", "wait_running", "mark_done")

CATALOG: dict[str, OperationKind] = {
    k.name: k
    for k in (
        OperationKind(
            "spawn",
            "flows.spawn.build",
            spawn.VERSION,
            "create and boot an instance",
            None,
            uses=(
                "ensure_base_image",
                "create_disk",
                "delete_disk",
                "plug_vif",
                "unplug_vif",
                "wait_for_vif_plugged",
                "define_guest",
                "undefine_guest",
                "power_on",
                "power_off",
                "get_info",
            ),
            steps=(
                "take_hold",
                "claim_resources",
                "ensure_base_image",
                "create_root_disk",
                "create_ephemeral_disk",
                "create_swap_disk",
                "plug_vif_N",
                "wait_vif_plugged",
                "define_guest",
                "power_on",
                "wait_running",
                "mark_active",
            ),
        ),
        OperationKind(
            "destroy",
            "flows.destroy.build",
            destroy.VERSION,
            "delete an instance (forward-only)",
            frozenset(
                {
                    VmState.ACTIVE,
                    VmState.STOPPED,
                    VmState.ERROR,
                    VmState.PAUSED,
                    VmState.SUSPENDED,
                    VmState.SOFT_DELETED,
                    VmState.RESCUED,
                }
            ),
            prepare=destroy.prepare,
            forward_only=True,
            no_return_step=destroy.NO_RETURN_STEP,
            uses=(
                "power_off",
                "undefine_guest",
                "unplug_vif",
                "delete_instance_files",
                "confirm_migration",
                "host_report",
            ),
            steps=(
                "take_hold",
                "power_off",
                "undefine_guest",
                "unplug_vifs",
                "delete_instance_files",
                "remove_other_copies",
                "release_claims",
                "mark_deleted",
            ),
        ),
        _power("power_off", _RUNNING_ISH, "stop the guest"),
        _power("power_on", {VmState.STOPPED}, "start a stopped guest"),
        _power(
            "reboot",
            {VmState.ACTIVE, VmState.STOPPED, VmState.ERROR},
            "restart the guest (soft, falling back to hard)",
            Param("hard", bool, False, help="skip the soft attempt"),
        ),
        _power("pause", {VmState.ACTIVE}, "freeze the guest in memory"),
        _power("unpause", {VmState.PAUSED}, "continue a paused guest"),
        _power("suspend", {VmState.ACTIVE}, "save the guest's memory to disk and stop it"),
        OperationKind(
            "resume",
            "flows.power.build",
            power.VERSION,
            "restore a suspended guest",
            frozenset({VmState.SUSPENDED}),
            cli_name="unsuspend",
            uses=("resume", "suspend", "get_info"),
            steps=("take_hold", "resume_guest", "wait_running", "mark_done"),
        ),
        _power(
            "soft_delete", {VmState.ACTIVE, VmState.STOPPED, VmState.ERROR}, "stop the guest, keeping it restorable"
        ),
        _power("restore", {VmState.SOFT_DELETED}, "bring back a soft-deleted instance"),
        OperationKind(
            "rescue",
            "flows.rescue.build",
            rescue.VERSION,
            "boot from a rescue image, keeping the original disks",
            frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.ERROR}),
            (Param("image", str, help="rescue image (default: the instance's own)"),),
            prepare=rescue.prepare_rescue,
            uses=("rescue", "unrescue", "get_info"),
            steps=tuple(s.format("rescue") for s in _GUEST_MODE),
        ),
        OperationKind(
            "unrescue",
            "flows.rescue.build",
            rescue.VERSION,
            "boot from the original disk again",
            frozenset({VmState.RESCUED}),
            prepare=rescue.prepare_unrescue,
            uses=("unrescue", "rescue", "get_info"),
            steps=tuple(s.format("unrescue") for s in _GUEST_MODE),
        ),
        OperationKind(
            "snapshot",
            "flows.snapshot.build",
            snapshot.VERSION,
            "save the root disk as a new image in the local image store",
            frozenset({VmState.ACTIVE, VmState.STOPPED}),
            (Param("image_name", str, required=True, help="name of the new image"),),
            prepare=snapshot.prepare,
            uses=("snapshot",),
            steps=("take_hold", "snapshot_guest", "register_image", "mark_done"),
        ),
        OperationKind(
            "rebuild",
            "flows.rebuild.build",
            rebuild.VERSION,
            "re-create the root disk from an image and boot",
            frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.ERROR}),
            (
                Param("image", str, required=True, help="image to rebuild from"),
                Param("preserve_ephemeral", bool, False, help="keep the ephemeral disk's data"),
            ),
            prepare=rebuild.prepare,
            uses=("ensure_base_image", "rebuild", "get_info"),
            steps=("take_hold", "ensure_base_image", "rebuild_guest", "wait_running", "mark_done"),
        ),
        OperationKind(
            "resize",
            "flows.resize.build",
            resize.VERSION,
            "move to another flavor (and host); waits in resized for confirm or revert",
            frozenset({VmState.ACTIVE, VmState.STOPPED}),
            (Param("flavor", str, required=True, help="the new flavor"), _TARGET_HOST),
            prepare=resize.prepare_resize,
            uses=_COLD_MIGRATION,
            steps=_MOVE_STEPS,
        ),
        OperationKind(
            "migrate",
            "flows.resize.build",
            resize.VERSION,
            "move to another host, stopped (cold); waits in resized for confirm or revert",
            frozenset({VmState.ACTIVE, VmState.STOPPED}),
            (_TARGET_HOST,),
            prepare=resize.prepare_migrate,
            uses=_COLD_MIGRATION,
            steps=_MOVE_STEPS,
        ),
        OperationKind(
            "confirm_resize",
            "flows.resize.build",
            resize.VERSION,
            "keep a resize or migration: delete the source copy (forward-only)",
            frozenset({VmState.RESIZED, VmState.ERROR}),
            prepare=resize.prepare_confirm,
            forward_only=True,
            uses=("confirm_migration",),
            steps=("take_hold", "confirm_migration", "release_source_claims", "mark_done"),
        ),
        OperationKind(
            "revert_resize",
            "flows.resize.build",
            resize.VERSION,
            "undo a resize or migration: back to the source host and old flavor (forward-only)",
            frozenset({VmState.RESIZED, VmState.ERROR}),
            prepare=resize.prepare_revert,
            forward_only=True,
            uses=("power_off", "undefine_guest", "delete_instance_files", "unplug_vif", "finish_revert_migration"),
            steps=(
                "take_hold",
                "destroy_on_destination",
                "unplug_vifs",
                "finish_revert_migration",
                "release_destination_claim",
                "mark_done",
            ),
        ),
        OperationKind(
            "evacuate",
            "flows.evacuate.build",
            evacuate.VERSION,
            "rebuild an instance of a host marked down on another host",
            frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.ERROR}),
            (_TARGET_HOST,),
            prepare=evacuate.prepare,
            uses=(
                "check_instance_shared_storage_local",
                "check_instance_shared_storage_remote",
                "check_instance_shared_storage_cleanup",
                "ensure_base_image",
                "create_disk",
                "delete_disk",
                "plug_vif",
                "unplug_vif",
                "define_guest",
                "undefine_guest",
                "power_on",
                "power_off",
                "get_info",
            ),
            steps=(
                "take_hold",
                "claim_destination",
                "reuse_root_disk",
                "reuse_ephemeral_disk",
                "reuse_swap_disk",
                "ensure_base_image",
                "create_root_disk",
                "create_ephemeral_disk",
                "create_swap_disk",
                "plug_vif_N",
                "define_guest",
                "power_on",
                "wait_running",
                "release_source_claims",
                "mark_done",
            ),
        ),
        OperationKind(
            "set_admin_password",
            "flows.guest_agent.build",
            guest_agent.VERSION,
            "set the guest's admin password",
            frozenset({VmState.ACTIVE}),
            (Param("password", str, secret=True, required=True, help="the new password"),),
            uses=("set_admin_password",),
            steps=("take_hold", "set_admin_password", "mark_done"),
        ),
        OperationKind(
            "inject_file",
            "flows.guest_agent.build",
            guest_agent.VERSION,
            "write a file into the guest",
            frozenset({VmState.ACTIVE}),
            (
                Param("path", str, required=True, help="absolute path in the guest"),
                Param("contents", str, secret=True, required=True, help="the file's contents"),
            ),
            prepare=guest_agent.prepare_inject_file,
            uses=("inject_file",),
            steps=("take_hold", "inject_file", "mark_done"),
        ),
        OperationKind(
            "change_metadata",
            "flows.guest_agent.build",
            guest_agent.VERSION,
            "set or remove instance metadata keys",
            frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED, VmState.RESCUED}),
            (Param("set", list, help="KEY=VALUE to set"), Param("unset", list, help="KEY to remove")),
            prepare=guest_agent.prepare_metadata,
            uses=("change_instance_metadata",),
            steps=("take_hold", "update_guest_metadata", "mark_done"),
        ),
        _device(
            "attach_volume",
            "attach a volume to the guest",
            Param("volume_id", str, required=True, help="the volume"),
            Param("mountpoint", str, help="device name (default: the next free /dev/vdX)"),
        ),
        _device(
            "detach_volume", "detach a volume from the guest", Param("volume_id", str, required=True, help="the volume")
        ),
        _device(
            "swap_volume",
            "replace an attached volume by another at the same mountpoint",
            Param("volume_id", str, required=True, help="the attached volume"),
            Param("new_volume_id", str, required=True, help="the volume to put in its place"),
        ),
        _device(
            "attach_interface",
            "add a network interface to the guest",
            Param("network", str, "default", help="network of the new interface"),
        ),
        _device(
            "detach_interface",
            "remove a network interface from the guest",
            Param("port_id", str, required=True, help="the interface's id"),
        ),
        OperationKind(
            "reconcile",
            "flows.reconcile.build",
            reconcile.VERSION,
            "bring hosts and database back in agreement (computeflow reconcile --apply; forward-only)",
            None,
            forward_only=True,
            no_return_step=reconcile.NO_RETURN_STEP,
            uses=(
                "host_report",
                "get_info",
                "power_off",
                "undefine_guest",
                "plug_vif",
                "unplug_vif",
                "detach_volume",
                "confirm_migration",
                "finish_revert_migration",
                "delete_instance_files",
            ),
            # Each action's step is named after it, numbered from the second of a kind.
            steps=("take_hold", *RECONCILE_ACTIONS, *(a + INDEX for a in RECONCILE_ACTIONS), "release_hold"),
        ),
        OperationKind(
            "live_migration",
            "flows.live_migration.build",
            live_migration.VERSION,
            "move a running instance to another host without stopping it",
            frozenset({VmState.ACTIVE, VmState.PAUSED}),
            (Param("target_host", str, required=True, help="host to move it to"),),
            prepare=live_migration.prepare,
            uses=live_migration.USES,
            no_return_step=live_migration.NO_RETURN_STEP,
            steps=(
                "take_hold",
                "claim_destination",
                "check_live_migration",
                "pre_live_migration",
                "live_migration",
                "switch_over",
                "post_live_migration",
                "post_live_migration_at_source",
                "release_source_claims",
                "post_live_migration_at_destination",
                "mark_done",
            ),
        ),
    )
}


def get(kind: str) -> OperationKind:
    try:
        return CATALOG[kind]
    except KeyError:
        raise KeyError(f"unknown operation {kind!r} (known: {', '.join(sorted(CATALOG))})") from None


def step_matches(pattern: str, name: str) -> bool:
    """Whether step `name` is the catalogue's step `pattern` (INDEX: any index)."""
    if pattern.endswith(INDEX):
        base = pattern[: -len(INDEX)] + "_"
        return name.startswith(base) and name[len(base) :].isdigit()
    return name == pattern


def kinds_with_step(name: str) -> list[str]:
    """The operations whose flow may have a step called `name`, in catalogue order."""
    return [k.name for k in CATALOG.values() if any(step_matches(p, name) for p in k.steps)]


def step_names() -> list[str]:
    """Every step name of every operation, sorted; an indexed one as `plug_vif_<n>`."""
    return sorted({p[: -len(INDEX)] + "_<n>" if p.endswith(INDEX) else p for k in CATALOG.values() for p in k.steps})


def instance_operations() -> list[OperationKind]:
    """Operations on an existing instance, in catalogue order."""
    return [k for k in CATALOG.values() if k.accepts_vm_states is not None]
