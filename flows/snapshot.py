"""Snapshot: copy an instance's root disk into the local image store.

    take_hold -> snapshot_guest -> register_image -> mark_done

The file goes to `image_store_path` under a name unique to the operation and
the record into the images table; a failed snapshot removes both, so nothing
half-made is ever offered to a spawn. The instance keeps its state.
"""

from __future__ import annotations

import os
import re
from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

from computeflow.states import TaskState
from flows import runtime
from flows.errors import InvalidRequest
from flows.steps.images import RegisterImage, SnapshotGuest
from flows.steps.instance import FinishOperation, TakeHold
from persistence import hosts
from persistence.models import Instance

VERSION = 1
_IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def prepare(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    name = values["image_name"]
    if not _IMAGE_NAME_RE.match(name):
        raise InvalidRequest(f"invalid image name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
    if hosts.get_image(s, name) is not None:
        raise InvalidRequest(f"an image named {name!r} already exists")
    store = runtime.current().conf.image_store_path
    return {"image_path": os.path.join(store, f"{name}.{op_id[:8]}.qcow2")}


def build(**_params: object) -> linear_flow.Flow:
    return linear_flow.Flow("snapshot").add(
        TakeHold(task_state=TaskState.IMAGE_SNAPSHOT),
        SnapshotGuest(),
        RegisterImage(),
        FinishOperation(),
    )
