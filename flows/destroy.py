"""Destroy: remove an instance for good.

    take_hold -> (forward-only, retried) power_off -> undefine_guest
              -> unplug_vifs -> delete_instance_files -> remove_other_copies
              -> release_claims -> mark_deleted

remove_other_copies removes what a resize left: the source copy kept for a
revert (on the instance's host or on the migration's other host) and, after a
failed move repaired by hand, anything of the instance on the other hosts its
migration record names. Destroy leaves nothing the database knows of.

Past take_hold nothing is ever re-created: the forward steps have no revert,
a failing step is retried up to forward_retries times, and a crash resumes
forward. If the retries run out, the only revert is take_hold's, which leaves
the instance in ERROR for an operator; running destroy again finishes the job
because every step is idempotent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from taskflow import retry
from taskflow.patterns import linear_flow

from computeflow.states import TaskState, VmState
from flows import runtime
from flows.steps.disks import DeleteInstanceFiles
from flows.steps.guest import PowerOffGuest, UndefineGuest
from flows.steps.instance import MarkDeleted, TakeHold
from flows.steps.migration import RemoveOtherCopies
from flows.steps.network import UnplugVifs
from flows.steps.resources import ReleaseInstanceClaims
from persistence.models import Instance

VERSION = 2


#: The retry controller of the forward-only phase (the catalogue's `no_return_step`).
NO_RETURN_STEP = "retry_destroy_forward"


def build(*, host: str | None, vifs: list[dict[str, Any]], **_params: object) -> linear_flow.Flow:
    attempts = runtime.current().conf.forward_retries
    forward = linear_flow.Flow("destroy_forward", retry=retry.Times(attempts, name=NO_RETURN_STEP))
    if host is not None:  # never placed (a spawn that failed early): nothing on a hypervisor
        forward.add(
            PowerOffGuest(),
            UndefineGuest(),
            UnplugVifs([v["id"] for v in vifs]),
            DeleteInstanceFiles(),
            RemoveOtherCopies(),
            ReleaseInstanceClaims(),
        )
    forward.add(MarkDeleted())
    return linear_flow.Flow("destroy").add(
        TakeHold(task_state=TaskState.DELETING, revert_vm_state=VmState.ERROR),
        forward,
    )


def prepare(s: Session, inst: Instance, values: dict[str, Any], op_id: str) -> dict[str, Any]:
    """The other hosts a migration record names (the copies destroy removes)."""
    mig = (inst.system_metadata or {}).get("migration") or {}
    return {"copy_hosts": sorted({h for h in (mig.get("source_host"), mig.get("dest_host")) if h and h != inst.host})}
