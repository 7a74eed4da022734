"""Rescue and unrescue: boot from a rescue image, keeping the original disks.

    rescue:    take_hold -> rescue_guest -> wait_running -> mark_done (rescued)
    unrescue:  take_hold -> unrescue_guest -> wait_running -> mark_done (active)

The rescue image (by default the instance's own image) is resolved at
submission and remembered in the instance's system metadata, so that an
unrescue that fails can put the guest back into the same rescue.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

from computeflow.states import TaskState, VmState
from flows import prepare as p
from flows.steps.guest import WaitRunning
from flows.steps.guest_modes import RescueGuest, UnrescueGuest
from flows.steps.instance import FinishOperation, TakeHold
from persistence.models import Instance

VERSION = 1


def prepare_rescue(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    image = p.image_dict(s, values.get("image") or inst.image)
    meta = p.system_metadata(inst) | {"rescue_image": image}
    return {"rescue_image": image, **p.columns(inst, system_metadata=meta)}


def prepare_unrescue(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    meta = p.system_metadata(inst)
    image = meta.pop("rescue_image", None) or p.image_dict(s, inst.image)
    return {"rescue_image": image, **p.columns(inst, system_metadata=meta)}


def build(*, operation: str, **_params: object) -> linear_flow.Flow:
    if operation == "rescue":
        return linear_flow.Flow("rescue").add(
            TakeHold(task_state=TaskState.RESCUING),
            RescueGuest(),
            WaitRunning(),
            FinishOperation(VmState.RESCUED, "running"),
        )
    return linear_flow.Flow("unrescue").add(
        TakeHold(task_state=TaskState.UNRESCUING),
        UnrescueGuest(),
        WaitRunning(),
        FinishOperation(VmState.ACTIVE, "running"),
    )
