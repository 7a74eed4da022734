"""Host-level actions around moves: marking a host down or up (cleaning what
evacuated instances left on it), evacuating a whole host, and the
auto-confirm pass that confirms resizes older than resize_confirm_window.

Each function submits ordinary catalogue operations or makes idempotent
driver calls, so running it again after a crash finishes the job.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING


from computeflow.states import VmState
from flows.errors import InstanceLocked, InvalidState, NotFound, OperationError
from flows.steps.migration import destroy_guest
from persistence import hosts, instances
from persistence.models import utcnow

if TYPE_CHECKING:
    from conductor.api import Conductor

LOG = logging.getLogger(__name__)


def set_host_down(c: Conductor, name: str) -> None:
    """Nothing is placed on the host any more; its instances may be evacuated."""
    with c.db.session() as s:
        if not hosts.set_down(s, name, True):
            raise NotFound("host", name)
    LOG.info("host %s marked down", name)


def set_host_up(c: Conductor, name: str) -> list[str]:
    """Clean the leftovers of instances evacuated from `name`, then mark it up.

    A leftover is a guest the host's driver still has whose instance now
    lives elsewhere (or was deleted) and that no operation holds. Its guest,
    ports and files here are removed (on shared storage the fake drops only
    this host's view of the disks). Returns the cleaned instance uuids. The
    host is marked up last, so a crash in between leaves it down and the
    next set-up finishes the cleaning.
    """
    with c.db.session() as s:
        if hosts.get_host(s, name) is None:
            raise NotFound("host", name)
    drv = c.rt.driver_for(name)
    cleaned = []
    for uuid in drv.list_instance_uuids():
        with c.db.session() as s:
            inst = instances.get(s, uuid)
            if inst is None or inst.host == name or inst.held_by is not None:
                continue
            vif_ids = [v["id"] for v in inst.vifs or []]
        destroy_guest(name, uuid)
        for vif_id in vif_ids:
            drv.unplug_vif(uuid, vif_id)
        cleaned.append(uuid)
        LOG.info("host %s: removed leftovers of instance %s (now elsewhere)", name, uuid)
    with c.db.session() as s:
        hosts.set_down(s, name, False)
    LOG.info("host %s marked up", name)
    return cleaned


def evacuate_host(c: Conductor, name: str, target_host: str | None = None) -> list[str]:
    """Submit an evacuate for every instance of a host marked down; their ids.

    An instance that cannot be evacuated now (held, wrong state) is skipped
    and logged; the others go ahead.
    """
    with c.db.session() as s:
        h = hosts.get_host(s, name)
        if h is None:
            raise NotFound("host", name)
        names = [i.uuid for i in instances.list_live(s) if i.host == name]
    params = {"target_host": target_host} if target_host else {}
    submitted = []
    for uuid in names:
        try:
            submitted.append(c.submit("evacuate", uuid, **params))
        except (InstanceLocked, InvalidState) as e:
            LOG.warning("not evacuating %s: %s", uuid, e)
    return submitted


def due_for_confirm(c: Conductor, now: dt.datetime | None = None) -> list[str]:
    """Uuids of instances resized longer than resize_confirm_window ago (none if 0)."""
    window = c.conf.conductor.resize_confirm_window
    if window <= 0:
        return []
    cutoff = (now or utcnow()) - dt.timedelta(seconds=window)
    with c.db.session() as s:
        rows = [i for i in instances.list_live(s) if i.vm_state == VmState.RESIZED and i.held_by is None]
        stamps = {i.uuid: ((i.system_metadata or {}).get("migration") or {}).get("resized_at") for i in rows}
    return [u for u, at in stamps.items() if at and dt.datetime.fromisoformat(at) <= cutoff]


def auto_confirm(c: Conductor, now: dt.datetime | None = None) -> list[str]:
    """Submit confirm_resize for every instance due; the operation ids.

    An instance taken by another operation meanwhile (a revert, another
    conductor's confirm) is left to it.
    """
    submitted = []
    for uuid in due_for_confirm(c, now):
        try:
            submitted.append(c.submit("confirm_resize", uuid))
        except OperationError as e:
            LOG.info("auto-confirm of %s skipped: %s", uuid, e)
    return submitted
