"""Steps on the instance record: the hold and the states users see."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from computeflow.states import TaskState, VmState
from flows import runtime
from flows.errors import InstanceLocked
from flows.steps.base import Step
from persistence import instances


def hold_or_refuse(s: Session, instance_uuid: str, operation_id: str) -> None:
    """Hold the instance for this operation, or raise InstanceLocked naming the holder.

    Also how a revert of a step that released the hold takes it back: the
    earlier steps' reverts only touch an instance this operation holds. If
    another operation grabbed it meanwhile, reverting under it would be
    wrong: the revert fails and an operator decides.
    """
    holder = instances.take_hold(s, instance_uuid, operation_id)
    if holder is not None:
        raise InstanceLocked(instance_uuid, holder)


class TakeHold(Step):
    """Hold the instance for this operation (compare-and-swap on held_by).

    Submission already took the hold in the transaction that created the
    operation; running it again here makes a resumed flow re-assert it.
    On revert the hold is dropped and the instance shows `revert_vm_state`,
    or (None) the vm_state it had when the operation was submitted.
    """

    def __init__(self, task_state: str, revert_vm_state: str | None = None, **kw: Any) -> None:
        super().__init__(name="take_hold", **kw)
        self.task_state = task_state
        self.revert_vm_state = revert_vm_state

    def execute(self, operation_id: str, instance_uuid: str) -> None:
        with runtime.current().db.session() as s:
            hold_or_refuse(s, instance_uuid, operation_id)
            instances.update_if_held(s, instance_uuid, operation_id, task_state=self.task_state)

    def revert(
        self,
        operation_id: str,
        instance_uuid: str,
        prior_vm_state: str | None = None,
        prior_power_state: str | None = None,
        **_: object,
    ) -> None:
        restore = {"vm_state": self.revert_vm_state or prior_vm_state or "error"}
        if prior_power_state is not None and self.revert_vm_state is None:
            restore["power_state"] = prior_power_state
        with runtime.current().db.session() as s:
            instances.release_hold(s, instance_uuid, operation_id, task_state=None, **restore)


class MarkActive(Step):
    """The guest runs: show ACTIVE and release the hold in one UPDATE."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="mark_active", **kw)

    def execute(self, operation_id: str, instance_uuid: str, host: str) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(
                s,
                instance_uuid,
                operation_id,
                vm_state=VmState.ACTIVE,
                power_state="running",
                task_state=None,
                host=host,
            )

    def revert(self, operation_id: str, instance_uuid: str, **_: object) -> None:
        with runtime.current().db.session() as s:
            hold_or_refuse(s, instance_uuid, operation_id)
            instances.update_if_held(
                s, instance_uuid, operation_id, vm_state=VmState.BUILDING, task_state=TaskState.SPAWNING
            )


class MarkDeleted(Step):
    """Destroy's last step: the record stays for history, the name is freed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="mark_deleted", **kw)

    def execute(self, operation_id: str, instance_uuid: str) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(
                s,
                instance_uuid,
                operation_id,
                vm_state=VmState.DELETED,
                power_state="nostate",
                task_state=None,
                host=None,
                live_marker=instance_uuid,
            )


class MarkState(Step):
    """Show the operation's end state and release the hold in one UPDATE."""

    def __init__(self, vm_state: str, power_state: str, **kw: Any) -> None:
        super().__init__(name="mark_done", **kw)
        self.vm_state = vm_state
        self.power_state = power_state

    def execute(self, operation_id: str, instance_uuid: str) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(
                s, instance_uuid, operation_id, vm_state=self.vm_state, power_state=self.power_state, task_state=None
            )

    def revert(
        self, operation_id: str, instance_uuid: str, prior_vm_state: str, prior_power_state: str, **_: object
    ) -> None:
        with runtime.current().db.session() as s:
            hold_or_refuse(s, instance_uuid, operation_id)
            instances.update_if_held(
                s, instance_uuid, operation_id, vm_state=prior_vm_state, power_state=prior_power_state
            )


class FinishOperation(Step):
    """Show the end state, write the operation's column changes and release the
    hold, all in one UPDATE.

    The column changes (`set_columns`) and their prior values (`prior_columns`)
    were computed at submission, while the hold was taken, so neither execute
    nor revert reads anything that a crash could have changed. A state left
    None keeps the prior one (a snapshot does not change what the guest is).
    """

    def __init__(self, vm_state: str | None = None, power_state: str | None = None, **kw: Any) -> None:
        super().__init__(name="mark_done", **kw)
        self.vm_state = vm_state
        self.power_state = power_state

    def execute(
        self,
        operation_id: str,
        instance_uuid: str,
        prior_vm_state: str,
        prior_power_state: str,
        set_columns: dict[str, Any] | None = None,
    ) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(
                s,
                instance_uuid,
                operation_id,
                task_state=None,
                vm_state=self.vm_state or prior_vm_state,
                power_state=self.power_state or prior_power_state,
                **(set_columns or {}),
            )

    def revert(
        self,
        operation_id: str,
        instance_uuid: str,
        prior_vm_state: str,
        prior_power_state: str,
        prior_columns: dict[str, Any] | None = None,
        **_: object,
    ) -> None:
        with runtime.current().db.session() as s:
            hold_or_refuse(s, instance_uuid, operation_id)
            instances.update_if_held(
                s,
                instance_uuid,
                operation_id,
                vm_state=prior_vm_state,
                power_state=prior_power_state,
                **(prior_columns or {}),
            )
