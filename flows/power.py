"""Power operations: one guest action between taking and releasing the hold.

    take_hold -> <action>_guest [-> wait_running] -> mark_done

power_off/power_on, pause/unpause, suspend/resume and soft_delete/restore
are each other's inverses, so every action's revert is its partner. A reboot
cannot be undone: its failure restores the prior vm_state and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from taskflow.patterns import linear_flow

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
    "power_off": Transition("power_on", "powering-off", "stopped", "shutdown"),
    "power_on": Transition("power_off", "powering-on", "active", "running", wait_running=True),
    "pause": Transition("unpause", "pausing", "paused", "paused"),
    "unpause": Transition("pause", "unpausing", "active", "running"),
    "suspend": Transition("resume", "suspending", "suspended", "suspended"),
    "resume": Transition("suspend", "resuming", "active", "running", wait_running=True),
    "soft_delete": Transition("restore", "soft-deleting", "soft_deleted", "shutdown"),
    "restore": Transition("soft_delete", "restoring", "active", "running", wait_running=True),
    "reboot": Transition(None, "rebooting", "active", "running", wait_running=True),
}


def build(*, operation: str, **_params: object) -> linear_flow.Flow:
    t = TRANSITIONS[operation]
    action = RebootGuest() if operation == "reboot" else GuestAction(operation, t.undo)
    flow = linear_flow.Flow(operation).add(TakeHold(task_state=t.task_state), action)
    if t.wait_running:
        flow.add(WaitRunning())
    return flow.add(MarkState(t.vm_state, t.power_state))
