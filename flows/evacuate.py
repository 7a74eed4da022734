"""Evacuate: rebuild an instance of a host marked down on another host.

    take_hold -> claim_destination
              -> ensure_base_image -> create_<kind>_disk ...   (storage not shared)
                 or reuse_<kind>_disk ...                       (storage shared)
              -> plug_vif_N -> define_guest [-> power_on -> wait_running]
              -> release_source_claims -> mark_done (host = destination)

Whether the disks are shared is asked at submission (the destination leaves
a marker with check_instance_shared_storage_local, the dead host's driver is
asked whether it sees it, the marker is removed), so the flow's shape is fixed
and stored. Everything is revertible: a failure leaves the instance on the
dead host with its claims, as before. What the dead host still holds (guest,
disks, ports) is cleaned when it is marked up again (conductor/moves.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow.patterns import linear_flow

import drivers
from computeflow.states import TaskState
from drivers.errors import DriverError
from flows import placement, prepare as p, runtime
from flows.errors import InvalidRequest
from flows.params import FlavorParams
from flows.placement import Move
from flows.resize import source_claims
from flows.spawn import disk_plan
from flows.steps.disks import CreateDisk, EnsureBaseImage
from flows.steps.guest import DefineGuest, PowerOn, WaitRunning
from flows.steps.instance import FinishOperation, TakeHold
from flows.steps.migration import ClaimDestination, ReleaseSourceClaims, ReuseSharedDisk
from flows.steps.network import PlugVif
from persistence import hosts
from persistence.models import Host, Instance

VERSION = 1
_AT_DEST = {"host": "dest_host"}


def prepare(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    source = hosts.get_host(s, inst.host) if inst.host else None
    if source is None or not source.down:
        raise InvalidRequest(
            f"cannot evacuate instance {inst.name}: its host {inst.host} is not marked down "
            f"(computeflow hosts set-down {inst.host})"
        )
    flavor = p.flavor_dict(s, inst.flavor)
    dest = placement.place(s, flavor, values.get("target_host"), Move(inst.name, source.name))
    return {
        "dest_host": dest,
        "new_flavor": flavor,
        "flavor": flavor,
        "image": p.image_dict(s, inst.image),
        "admin_password": None,
        "shared_storage": _shared_storage(s, inst, source, dest),
        "power_on": inst.power_state == "running",
        "source_claims": source_claims(s, inst, source.name),
        **p.columns(inst, host=dest),
    }


def _shared_storage(s: Session, inst: Instance, source: Host, dest: str) -> bool:
    """Does `dest` see the disks of the instance's (dead) host?

    Drivers are built from the rows of this session: the runtime's cache
    would open a second transaction, which SQLite makes wait on this one.
    """
    conf = runtime.current().conf
    here = hosts.get_host(s, dest)
    if here is None:  # placement returned it from this session's rows
        raise InvalidRequest(f"cannot evacuate instance {inst.name}: host {dest!r} is not registered")
    dest_drv = drivers.load_driver(conf, here.name, here.driver, here.uri)
    source_drv = drivers.load_driver(conf, source.name, source.driver, source.uri)
    try:
        data = dest_drv.check_instance_shared_storage_local(inst.uuid)
        if data is None:  # no guess: a wrong one recreates disks over the shared ones, or loses them
            raise InvalidRequest(
                f"cannot evacuate instance {inst.name}: host {dest} cannot tell "
                f"whether it shares storage with {source.name}"
            )
        try:
            return bool(source_drv.check_instance_shared_storage_remote(data))
        finally:
            dest_drv.check_instance_shared_storage_cleanup(data)
    except DriverError as e:
        raise InvalidRequest(f"cannot evacuate instance {inst.name}: {e}") from None


def build(
    *, flavor: FlavorParams, vifs: list[dict[str, Any]], shared_storage: bool, power_on: bool, **_params: object
) -> linear_flow.Flow:
    plan = disk_plan(flavor)
    if shared_storage:
        disks = [ReuseSharedDisk(kind, size) for kind, size in plan]
    else:
        disks = [EnsureBaseImage(rebind=_AT_DEST), *[CreateDisk(kind, size, rebind=_AT_DEST) for kind, size in plan]]
    flow = linear_flow.Flow("evacuate").add(
        TakeHold(task_state=TaskState.REBUILDING),
        ClaimDestination(),
        *disks,
        *[PlugVif(i, vif, rebind=_AT_DEST) for i, vif in enumerate(vifs)],
        DefineGuest([kind for kind, _ in plan], vifs, rebind=_AT_DEST),
    )
    if power_on:
        flow.add(PowerOn(rebind=_AT_DEST), WaitRunning(rebind=_AT_DEST))
    return flow.add(ReleaseSourceClaims(), FinishOperation())
