"""Rebuild: re-create an instance's root disk from a (new) image and boot it.

    take_hold -> ensure_base_image -> rebuild_guest -> wait_running -> mark_done

The ephemeral disk is re-created empty unless preserve_ephemeral is asked.
A failure rebuilds back from the previous image and stops the guest again if
it was stopped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

from computeflow.states import TaskState, VmState
from flows import prepare as p
from flows.errors import NotFound
from flows.steps.disks import EnsureBaseImage
from flows.steps.guest import WaitRunning
from flows.steps.guest_modes import RebuildGuest
from flows.steps.instance import FinishOperation, TakeHold
from persistence.models import Instance

VERSION = 1


def prepare(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    new = p.image_dict(s, values["image"])
    try:
        prior = p.image_dict(s, inst.image)
    except NotFound:  # the old image record is gone: a revert can only name it
        prior = {"name": inst.image, "disk_format": "raw", "size_mb": 0, "path": None}
    return {"new_image": new, "prior_image": prior, **p.columns(inst, image=new["name"])}


def build(**_params: object) -> linear_flow.Flow:
    return linear_flow.Flow("rebuild").add(
        TakeHold(task_state=TaskState.REBUILDING),
        EnsureBaseImage(rebind={"image": "new_image"}),
        RebuildGuest(),
        WaitRunning(),
        FinishOperation(VmState.ACTIVE, "running"),
    )
