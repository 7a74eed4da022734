"""The repairs of a reconciliation: an audit's actions grouped into operations.

`plans` groups the findings' actions into `reconcile` operations (one per
instance, under its hold when they change its record; one for the records)
and `submit` records one as an operation (flows/reconcile.py runs it).
`conductor/reconcile.py`'s `apply` runs them.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from conductor.reconcile_report import Audit
from flows import catalog
from flows.steps.reconcile import HOLDING_ACTIONS
from persistence import instances, operations


@dataclass(frozen=True)
class Plan:
    """The actions of one reconcile operation."""

    instance_uuid: str | None
    holds_instance: bool
    actions: list[dict]


def plans(result: Audit) -> tuple[list[Plan], list[str]]:
    """Group the findings' actions into operations; returns (plans, operations
    to resume). An instance's actions go together (one hold); orphans one
    operation per uuid; record fixes (claims, holds, usage) one operation, with
    usage recounts last."""
    by_instance: dict[str, list[dict]] = {}
    records: list[dict] = []
    resume: list[str] = []
    for f in result.actionable:
        a = f.action
        if a["action"] == "resume":
            resume.append(a["operation_id"])
        elif a["action"] in ("release_stale_claim", "release_stale_hold", "recount_usage"):
            records.append(a)
        else:
            by_instance.setdefault(a["instance_uuid"], []).append(a)
    out = []
    for uuid, actions in by_instance.items():
        # A live instance's stray copy is removed under its hold too: no
        # operation (a migration towards that host) may start meanwhile.
        holding = any(a["action"] in HOLDING_ACTIONS or a.get("live") for a in actions)
        out.append(Plan(uuid, holding, actions))
    if records:
        records.sort(key=lambda a: a["action"] == "recount_usage")
        out.append(Plan(None, False, records))
    return out, resume


def submit(conductor, plan: Plan):
    """Record one plan as a `reconcile` operation (taking the instance's hold
    when its actions change the record); None if the instance became busy."""
    kind = catalog.get("reconcile")
    op_id = str(uuidlib.uuid4())
    params: dict = {
        "operation": "reconcile",
        "instance_uuid": plan.instance_uuid,
        "holds_instance": plan.holds_instance,
        "actions": plan.actions,
    }
    with conductor.db.session() as s:
        if plan.holds_instance:
            inst = instances.get(s, plan.instance_uuid)
            if inst is None or inst.held_by is not None:
                return None
            if instances.take_hold(s, inst.uuid, op_id) is not None:
                return None
            params |= {
                "name": inst.name,
                "host": inst.host,
                "prior_vm_state": inst.vm_state,
                "prior_power_state": inst.power_state,
            }
        operations.create(
            s,
            op_id,
            "reconcile",
            plan.instance_uuid,
            params,
            kind.version,
            conductor._submit_owner,
            conductor.lease_seconds,
        )
    return conductor._submitted(op_id)
