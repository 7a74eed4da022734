"""Spawn: build an instance on a host.

    take_hold -> claim_resources -> [ ensure_base_image -> create_root_disk
                                      create_ephemeral_disk, create_swap_disk,
                                      plug_vif_N ... ]  (in parallel)
              -> wait_vif_plugged -> define_guest -> power_on -> wait_running
              -> mark_active

If any step fails, the completed ones are reverted in reverse order: the guest
is undefined, disks deleted, ports unplugged, the claim released and the
instance left in ERROR without a hold.
"""

from __future__ import annotations

from typing import Any

from taskflow.patterns import linear_flow, unordered_flow

from computeflow.states import TaskState, VmState
from drivers.base import DiskKind
from flows.params import FlavorParams
from flows.steps.disks import CreateDisk, EnsureBaseImage
from flows.steps.guest import DefineGuest, PowerOn, WaitRunning
from flows.steps.instance import MarkActive, TakeHold
from flows.steps.network import PlugVif, WaitVifPlugged
from flows.steps.resources import ClaimResources

VERSION = 1


def disk_plan(flavor: FlavorParams) -> list[tuple[DiskKind, int]]:
    """The disks a flavor asks for, with their sizes in MB."""
    plan = [(DiskKind.ROOT, flavor["root_gb"] * 1024)]
    if flavor.get("ephemeral_gb"):
        plan.append((DiskKind.EPHEMERAL, flavor["ephemeral_gb"] * 1024))
    if flavor.get("swap_mb"):
        plan.append((DiskKind.SWAP, flavor["swap_mb"]))
    return plan


def build(*, flavor: FlavorParams, vifs: list[dict[str, Any]], **_params: object) -> linear_flow.Flow:
    disks = disk_plan(flavor)
    prepare = unordered_flow.Flow("prepare_disks_and_network")
    for kind, size_mb in disks:
        if kind is DiskKind.ROOT:
            prepare.add(linear_flow.Flow("root_disk").add(EnsureBaseImage(), CreateDisk(kind, size_mb)))
        else:
            prepare.add(CreateDisk(kind, size_mb))
    for i, vif in enumerate(vifs):
        prepare.add(PlugVif(i, vif))

    return linear_flow.Flow("spawn").add(
        TakeHold(task_state=TaskState.SPAWNING, revert_vm_state=VmState.ERROR),
        ClaimResources(),
        prepare,
        WaitVifPlugged([v["id"] for v in vifs]),
        DefineGuest([kind for kind, _ in disks], vifs),
        PowerOn(),
        WaitRunning(),
        MarkActive(),
    )
