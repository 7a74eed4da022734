"""Power operations: one guest action between taking and releasing the hold.

    take_hold -> <action>_guest [-> wait_running] -> mark_done

power_off/power_on, pause/unpause, suspend/resume and soft_delete/restore
are each other's inverses, so every action's revert is its partner. A reboot
cannot be undone: its failure restores the prior vm_state and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskflow.patterns import linear_flow

from computeflow.states import TaskState, VmState
from flows.steps.guest import GuestAction, RebootGuest, WaitRunning
from flows.steps.instance import MarkState, TakeHold

VERSION = 1


@dataclass(frozen=True)
class Transition:
    undo: str | None
    task_state: str
    vm_state: str
    power_state: str
    wait_running: bool = False


TRANSITIONS: dict[str, Transition] = {
    "power_off": Transition("power_on", TaskState.POWERING_OFF, VmState.STOPPED, "shutdown"),
    "power_on": Transition("power_off", TaskState.POWERING_ON, VmState.ACTIVE, "running", wait_running=True),
    "pause": Transition("unpause", TaskState.PAUSING, VmState.PAUSED, "paused"),
    "unpause": Transition("pause", TaskState.UNPAUSING, VmState.ACTIVE, "running"),
    "suspend": Transition("resume", TaskState.SUSPENDING, VmState.SUSPENDED, "suspended"),
    "resume": Transition("suspend", TaskState.RESUMING, VmState.ACTIVE, "running", wait_running=True),
    "soft_delete": Transition("restore", TaskState.SOFT_DELETING, VmState.SOFT_DELETED, "shutdown"),
    "restore": Transition("soft_delete", TaskState.RESTORING, VmState.ACTIVE, "running", wait_running=True),
    "reboot": Transition(None, TaskState.REBOOTING, VmState.ACTIVE, "running", wait_running=True),
}


def build(*, operation: str, **_params: object) -> linear_flow.Flow:
    t = TRANSITIONS[operation]
    action = RebootGuest() if operation == "reboot" else GuestAction(operation, t.undo)
    flow = linear_flow.Flow(operation).add(TakeHold(task_state=t.task_state), action)
    if t.wait_running:
        flow.add(WaitRunning())
    return flow.add(MarkState(t.vm_state, t.power_state))
