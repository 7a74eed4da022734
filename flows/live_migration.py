"""Live migration: move a running guest to another host without stopping it.

    take_hold -> claim_destination -> check_live_migration -> pre_live_migration
      -> live_migration (progress rows; abort / force-complete on request)
      -> (forward-only, retried) switch_over -> post_live_migration (source)
         -> post_live_migration_at_source -> release_source_claims
         -> post_live_migration_at_destination -> mark_done

A failure before switch_over reverts everything: the destination is rolled
back and its claim released, the guest keeps running on the source (migrated
back if the hypervisor had completed the move). switch_over records the new
host; from there a crash or a failure only ever goes forward (flows/steps/live.py).

Abort and force-complete cannot be operations of their own (the migration
holds the instance), so they are requests: a flow-log row the running
migration step polls for (`request` below; persistence/progress.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow import retry
from taskflow.patterns import linear_flow

from flows import placement, prepare as p, runtime
from flows.errors import InvalidRequest, NotFound
from flows.placement import Move
from flows.steps.live import (
    STEP,
    CheckLiveMigration,
    ClaimOnDestination,
    DriverCall,
    HoldForMigration,
    LiveMigrate,
    MarkMigrated,
    PreLiveMigration,
    ReleaseSourceClaims,
    SwitchOver,
)
from persistence import instances, operations, progress
from persistence.models import Instance

VERSION = 1
USES = (
    "check_can_live_migrate_destination",
    "check_can_live_migrate_destination_cleanup",
    "check_can_live_migrate_source",
    "pre_live_migration",
    "live_migration",
    "live_migration_abort",
    "live_migration_force_complete",
    "rollback_live_migration_at_destination",
    "post_live_migration",
    "post_live_migration_at_source",
    "post_live_migration_at_destination",
    "get_info",
)
REQUESTS = {"abort": progress.ABORT_REQUESTED, "force_complete": progress.FORCE_COMPLETE_REQUESTED}


def prepare(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    """Refuse an unknown, down or full destination, or the instance's own host."""
    if inst.host is None:
        raise InvalidRequest(f"instance {inst.name} has no host to migrate from")
    flavor = p.flavor_dict(s, inst.flavor)
    dest = placement.check(s, values["target_host"], flavor, Move(inst.name, inst.host))
    return {"flavor": flavor, "destination": dest}


#: The retry controller of the post-switch-over phase: once it runs, the
#: migration only goes forward (the catalogue's `no_return_step`).
NO_RETURN_STEP = "retry_live_migration_forward"


def build(**_params: object) -> linear_flow.Flow:
    attempts = runtime.current().conf.forward_retries
    forward = linear_flow.Flow("live_migration_forward", retry=retry.Times(attempts, name=NO_RETURN_STEP))
    forward.add(
        SwitchOver(),
        DriverCall("post_live_migration", on="source", with_data=True),
        DriverCall("post_live_migration_at_source", on="source"),
        ReleaseSourceClaims(),
        DriverCall("post_live_migration_at_destination", on="destination"),
        MarkMigrated(),
    )
    return linear_flow.Flow("live_migration").add(
        HoldForMigration(),
        ClaimOnDestination(),
        CheckLiveMigration(),
        PreLiveMigration(),
        LiveMigrate(),
        forward,
    )


def request(s: Session, instance: str, what: str) -> str:
    """Ask the live migration running on `instance` to abort or force-complete.

    Returns the migration's operation id. Refused (nothing written) when no
    live migration holds the instance, or when it has already switched over.
    """
    inst = instances.find_live(s, instance)
    if inst is None:
        raise NotFound("instance", instance)
    verb = what.replace("_", "-")
    op = operations.get(s, inst.held_by) if inst.held_by else None
    if op is None or op.kind != "live_migration":
        busy = f" (operation {op.id} is a {op.kind})" if op is not None else ""
        raise InvalidRequest(f"cannot {verb} live migration of {inst.name}: no live migration is running{busy}")
    if op.state not in (operations.PENDING, operations.RUNNING):
        raise InvalidRequest(f"cannot {verb} live migration {op.id} of {inst.name}: it is {op.state}")
    if progress.last_step_state(s, op.id, STEP) == "SUCCESS":
        raise InvalidRequest(
            f"cannot {verb} live migration {op.id} of {inst.name}: the guest "
            f"already runs on {op.parameters.get('destination')}"
        )
    progress.add(s, op.id, STEP, REQUESTS[what], f"{verb} requested")
    return op.id
