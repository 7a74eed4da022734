"""Devices: attach, detach and swap volumes; attach and detach interfaces.

    take_hold -> attach_volume | detach_volume | swap_volume
                 | attach_interface | detach_interface -> mark_done

Submission checks the request against the records (a volume attached to
another instance is refused, a mountpoint is chosen) and computes the new
`volumes` or `vifs` column; mark_done writes it, and its revert writes back
the old one while the device step's revert undoes the change on the host.
"""

from __future__ import annotations

import string
import uuid
from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

from computeflow.states import TaskState
from flows import prepare as p
from flows.errors import InvalidRequest
from flows.steps.devices import AttachInterface, AttachVolume, DetachInterface, DetachVolume, SwapVolume
from flows.steps.instance import FinishOperation, TakeHold
from persistence import instances
from persistence.models import Instance

VERSION = 1

STEPS = {
    "attach_volume": (AttachVolume, TaskState.ATTACHING_VOLUME),
    "detach_volume": (DetachVolume, TaskState.DETACHING_VOLUME),
    "swap_volume": (SwapVolume, TaskState.SWAPPING_VOLUME),
    "attach_interface": (AttachInterface, TaskState.ATTACHING_INTERFACE),
    "detach_interface": (DetachInterface, TaskState.DETACHING_INTERFACE),
}


def _attached(inst: Instance) -> list[dict[str, Any]]:
    return list(inst.volumes or [])


def _refuse_if_in_use(s: Session, volume_id: str) -> None:
    for other in instances.list_live(s):
        if any(v["volume_id"] == volume_id for v in other.volumes or []):
            raise InvalidRequest(f"volume {volume_id} is already attached to instance {other.name}")


def _find(inst: Instance, volume_id: str) -> dict[str, Any]:
    for v in _attached(inst):
        if v["volume_id"] == volume_id:
            return v
    raise InvalidRequest(f"volume {volume_id} is not attached to instance {inst.name}")


def prepare_attach_volume(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    _refuse_if_in_use(s, values["volume_id"])
    used = {v["mountpoint"] for v in _attached(inst)}
    mountpoint = values.get("mountpoint")
    if mountpoint is None:
        free = [f"/dev/vd{c}" for c in string.ascii_lowercase[1:] if f"/dev/vd{c}" not in used]
        if not free:
            raise InvalidRequest(f"instance {inst.name} has no free device name")
        mountpoint = free[0]
    elif mountpoint in used:
        raise InvalidRequest(f"{mountpoint} of instance {inst.name} is in use")
    new = _attached(inst) + [{"volume_id": values["volume_id"], "mountpoint": mountpoint}]
    return {"mountpoint": mountpoint, **p.columns(inst, volumes=new)}


def prepare_detach_volume(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    att = _find(inst, values["volume_id"])
    new = [v for v in _attached(inst) if v is not att]
    return {"mountpoint": att["mountpoint"], **p.columns(inst, volumes=new)}


def prepare_swap_volume(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    att = _find(inst, values["volume_id"])
    _refuse_if_in_use(s, values["new_volume_id"])
    new = [
        ({"volume_id": values["new_volume_id"], "mountpoint": v["mountpoint"]} if v is att else v)
        for v in _attached(inst)
    ]
    return {"mountpoint": att["mountpoint"], **p.columns(inst, volumes=new)}


def prepare_attach_interface(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    b = uuid.uuid4().bytes
    vif = {
        "id": str(uuid.uuid4()),
        "mac": "fa:16:3e:" + ":".join(f"{x:02x}" for x in b[:3]),
        "network": values.get("network") or "default",
    }
    return {"vif": vif, **p.columns(inst, vifs=list(inst.vifs) + [vif])}


def prepare_detach_interface(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    for vif in inst.vifs:
        if vif["id"] == values["port_id"]:
            return {"vif": vif, **p.columns(inst, vifs=[v for v in inst.vifs if v is not vif])}
    raise InvalidRequest(f"instance {inst.name} has no interface {values['port_id']}")


def build(*, operation: str, **_params: object) -> linear_flow.Flow:
    step, task_state = STEPS[operation]
    return linear_flow.Flow(operation).add(
        TakeHold(task_state=task_state),
        step(),
        FinishOperation(),
    )
