"""Guest-agent operations: set the admin password, inject a file, change metadata.

    take_hold -> set_admin_password | inject_file | update_guest_metadata -> mark_done

The password and the file contents are secret parameters: encrypted at
submission, referenced by the operation, decrypted only inside the step. The
metadata diff and its inverse are computed at submission from the record.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

from computeflow.states import TaskState
from flows import prepare as p
from flows.errors import InvalidRequest
from flows.steps.agent import InjectFile, SetAdminPassword, UpdateGuestMetadata
from flows.steps.instance import FinishOperation, TakeHold
from persistence.models import Instance

VERSION = 1

STEPS = {
    "set_admin_password": (SetAdminPassword, TaskState.UPDATING_PASSWORD),
    "inject_file": (InjectFile, TaskState.INJECTING_FILE),
    "change_metadata": (UpdateGuestMetadata, TaskState.UPDATING_METADATA),
}


def prepare_inject_file(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    if not values["path"].startswith("/"):
        raise InvalidRequest(f"inject_file: path must be absolute, got {values['path']!r}")
    return {}


def prepare_metadata(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    changes: dict[str, str | None] = {}
    for item in values.get("set") or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"change_metadata: expected KEY=VALUE, got {item!r}")
        changes[key] = value
    for key in values.get("unset") or []:
        changes[key] = None
    if not changes:
        raise InvalidRequest("change_metadata needs at least one set or unset")
    old = dict(inst.user_metadata or {})
    new = {k: v for k, v in (old | changes).items() if v is not None}
    undo = {k: old.get(k) for k in changes}
    return {"metadata_changes": changes, "metadata_undo": undo, **p.columns(inst, user_metadata=new)}


def build(*, operation: str, **_params: object) -> linear_flow.Flow:
    step, task_state = STEPS[operation]
    return linear_flow.Flow(operation).add(
        TakeHold(task_state=task_state),
        step(),
        FinishOperation(),
    )
