"""Resize and cold migration, then confirm or revert.

    resize / migrate: take_hold -> claim_destination -> migrate_disk_and_power_off
                      -> plug_vif_N (destination) -> finish_migration
                      [-> wait_running] -> mark_done (RESIZED)
    confirm_resize:   take_hold -> (forward-only) confirm_migration
                      -> release_source_claims -> mark_done (ACTIVE/STOPPED)
    revert_resize:    take_hold -> (forward-only) destroy_on_destination
                      -> unplug_vifs (destination) -> finish_revert_migration
                      -> release_destination_claim -> mark_done (as before the resize)

A resize ends SUCCEEDED with the instance in RESIZED: nothing waits, the
instance record itself says what confirm or revert need
(system_metadata["migration"]: source host, old and new flavor, the claims of
both sides, the state before). Confirm and revert are forward-only: once the
source copy is deleted (or the destination one), going back is impossible, so
each step is retried on its own and a crash resumes forward. A migration
record marked by a confirm is refused a revert, and the other way round.

`migrate` is a resize to the same flavor on another host.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow import retry
from taskflow.patterns import linear_flow

from computeflow.states import TaskState, VmState
from flows import placement, prepare as p, runtime
from flows.errors import InvalidRequest
from flows.params import ClaimRow, FlavorParams
from flows.placement import Move
from flows.steps.base import Step
from flows.steps.guest import WaitRunning
from flows.steps.instance import FinishOperation, TakeHold
from flows.steps.migration import (
    ClaimDestination,
    ConfirmMigration,
    DestroyOnDestination,
    FinishMigration,
    FinishRevertMigration,
    MarkResized,
    MigrateDiskAndPowerOff,
    ReleaseClaims,
)
from flows.steps.network import PlugVif, UnplugVifs
from flows.steps.resources import flavor_disk_gb
from persistence import claims
from persistence.models import Instance

VERSION = 1
_AT_DEST = {"host": "dest_host"}


# -- submission ----------------------------------------------------------------
def prepare_resize(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    old, new = p.flavor_dict(s, inst.flavor), p.flavor_dict(s, values["flavor"])
    if new["name"] == old["name"]:
        raise InvalidRequest(f"instance {inst.name} already has flavor {old['name']} (to move it, migrate)")
    if new["root_gb"] < old["root_gb"]:
        raise InvalidRequest(
            f"flavor {new['name']} would shrink the root disk of {inst.name} "
            f"from {old['root_gb']} to {new['root_gb']} GB"
        )
    same_ok = runtime.current().conf.allow_resize_to_same_host
    dest = placement.place(
        s,
        new,
        values.get("target_host"),
        Move(inst.name, host_of(inst), same_ok, " (or set allow_resize_to_same_host)"),
    )
    return _move(s, inst, op_id, "resize", dest, old, new)


def prepare_migrate(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    flavor = p.flavor_dict(s, inst.flavor)
    dest = placement.place(s, flavor, values.get("target_host"), Move(inst.name, host_of(inst)))
    return _move(s, inst, op_id, "migrate", dest, flavor, flavor)


def host_of(inst: Instance) -> str:
    """The host a move starts from; an instance without one (a spawn that never
    got placed) has nothing to move."""
    if inst.host is None:
        raise InvalidRequest(f"instance {inst.name} is on no host: there is nothing to move")
    return inst.host


def source_claims(s: Session, inst: Instance, host: str) -> list[ClaimRow]:
    """The instance's claims on `host`, as rows a step can release or restore."""
    return [
        [c.operation_id, c.host, c.vcpus, c.ram_mb, c.disk_gb]
        for c in claims.claims_for_instance(s, inst.uuid)
        if c.host == host
    ]


def _move(
    s: Session, inst: Instance, op_id: str, kind: str, dest: str, old: FlavorParams, new: FlavorParams
) -> dict[str, Any]:
    migration = {
        "kind": kind,
        "operation": op_id,
        "source_host": inst.host,
        "dest_host": dest,
        "old_flavor": old,
        "new_flavor": new,
        "source_claims": source_claims(s, inst, host_of(inst)),
        "dest_claims": [[op_id, dest, new["vcpus"], new["ram_mb"], flavor_disk_gb(new)]],
        "vm_state": inst.vm_state,
        "power_state": inst.power_state,
    }
    meta = p.system_metadata(inst) | {"migration": migration}
    return {
        "dest_host": dest,
        "new_flavor": new,
        "power_on": inst.power_state == "running",
        **p.columns(inst, host=dest, flavor=new["name"], system_metadata=meta),
    }


def prepare_confirm(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    return _settle(inst, "confirm", "confirming")


def prepare_revert(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    return _settle(inst, "revert", "reverting")


def _settle(inst: Instance, verb: str, status: str) -> dict[str, Any]:
    """What confirm or revert needs, from the migration record. The record is
    marked with `status` in the submission's transaction: a confirm that
    failed half-way must never be followed by a revert (the source copy may
    be gone), nor a revert by a confirm."""
    meta = p.system_metadata(inst)
    mig = meta.get("migration")
    if mig is None:
        raise InvalidRequest(f"instance {inst.name} has no resize to {verb}")
    if mig.get("status") not in (None, status):
        started = {"confirming": "confirm", "reverting": "revert"}[mig["status"]]
        raise InvalidRequest(
            f"instance {inst.name}: a {started} of its resize was started and "
            f"did not finish; run {started}-resize again instead"
        )
    rest = {k: v for k, v in meta.items() if k != "migration"}
    if verb == "confirm":
        end = (VmState.ACTIVE if inst.power_state == "running" else VmState.STOPPED, inst.power_state)
        columns = p.columns(inst, system_metadata=rest)
    else:
        end = (mig["vm_state"], mig["power_state"])
        columns = p.columns(inst, system_metadata=rest, host=mig["source_host"], flavor=mig["old_flavor"]["name"])
    inst.system_metadata = meta | {"migration": {**mig, "status": status}}
    return {
        "source_host": mig["source_host"],
        "dest_host": mig["dest_host"],
        "source_claims": mig["source_claims"],
        "dest_claims": mig["dest_claims"],
        "power_on": mig["power_state"] == "running",
        "end_state": list(end),
        **columns,
    }


# -- flows -----------------------------------------------------------------------
def build(
    *,
    operation: str,
    vifs: list[dict[str, Any]] | None = None,
    power_on: bool = False,
    end_state: list[str] | None = None,
    **_params: object,
) -> linear_flow.Flow:
    vifs = vifs or []
    if operation in ("resize", "migrate"):
        flow = linear_flow.Flow(operation).add(
            TakeHold(task_state=TaskState.RESIZE_MIGRATING),
            ClaimDestination(),
            MigrateDiskAndPowerOff(),
            *[PlugVif(i, vif, rebind=_AT_DEST) for i, vif in enumerate(vifs)],
            FinishMigration(),
        )
        if power_on:
            flow.add(WaitRunning(rebind=_AT_DEST))
        return flow.add(MarkResized())
    if end_state is None:
        raise ValueError(f"{operation} needs end_state: the states the resize recorded")
    if operation == "confirm_resize":
        return _forward_only(
            operation,
            TaskState.RESIZE_CONFIRMING,
            end_state,
            ConfirmMigration(),
            ReleaseClaims("release_source_claims", "source_claims"),
        )
    return _forward_only(
        operation,
        TaskState.RESIZE_REVERTING,
        end_state,
        DestroyOnDestination(),
        UnplugVifs([v["id"] for v in vifs], rebind=_AT_DEST),
        FinishRevertMigration(),
        ReleaseClaims("release_destination_claim", "dest_claims"),
    )


def _forward_only(name: str, task_state: str, end_state: list[str], *steps: Step) -> linear_flow.Flow:
    """take_hold, then each step retried on its own (never re-running an
    earlier one: after a revert in place, destroying "the destination" again
    would destroy the restored guest), then mark_done."""
    attempts = runtime.current().conf.forward_retries
    flow = linear_flow.Flow(name).add(TakeHold(task_state=task_state, revert_vm_state=VmState.ERROR))
    for step in (*steps, FinishOperation(*end_state)):
        flow.add(
            linear_flow.Flow(f"{step.name}_retried", retry=retry.Times(attempts, name=f"retry_{step.name}")).add(step)
        )
    return flow
