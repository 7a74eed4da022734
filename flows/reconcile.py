"""Reconcile: carry out a reconciliation plan's actions as an operation.

    [take_hold] -> (forward-only, retried) action_1 -> ... -> action_n -> [release_hold]

The plan (conductor/reconcile_repairs.py) groups actions by instance: the actions
that change a live instance's record run under its hold, like any other
operation on it, so reconciliation never races a resize or a reboot. Actions
on resources of no live instance, and on records alone (claims, holds, usage
counters), need no hold. Every action step looks again before it acts (see
flows/steps/reconcile.py), so a plan run twice, or resumed after a crash,
converges instead of repeating itself.
"""

from __future__ import annotations

from typing import Any

from taskflow import retry
from taskflow.patterns import linear_flow

from computeflow.states import TaskState
from flows import runtime
from flows.steps.instance import TakeHold
from flows.steps.reconcile import ACTIONS, ReleaseHeldInstance

VERSION = 1


def step_names(actions: list[dict[str, Any]]) -> list[str]:
    """Each action's step name: the action's own, numbered from the second of a kind."""
    seen: dict[str, int] = {}
    names = []
    for a in actions:
        n = seen[a["action"]] = seen.get(a["action"], 0) + 1
        names.append(a["action"] if n == 1 else f"{a['action']}_{n}")
    return names


#: The retry controller of the forward-only phase (the catalogue's `no_return_step`).
NO_RETURN_STEP = "retry_reconcile_forward"


def build(*, actions: list[dict[str, Any]], holds_instance: bool = False, **_params: object) -> linear_flow.Flow:
    attempts = runtime.current().conf.forward_retries
    forward = linear_flow.Flow("reconcile_forward", retry=retry.Times(attempts, name=NO_RETURN_STEP))
    for name, action in zip(step_names(actions), actions, strict=True):
        forward.add(ACTIONS[action["action"]](name, action))
    flow = linear_flow.Flow("reconcile")
    if holds_instance:
        flow.add(TakeHold(task_state=TaskState.RECONCILING))
    flow.add(forward)
    if holds_instance:
        flow.add(ReleaseHeldInstance())
    return flow
