"""What an operator or admin may do to one operation from the API or a page,
each as `computeflow` does it: who may, in which states, what the page asks
before doing it, and the call into conductor/.

| action        | role     | when            | as                              |
| cancel        | operator | still running   | computeflow cancel (no wait)    |
| resume-plan   | operator | still running   | computeflow resume OP --dry-run |
| retry-revert  | admin    | FAILED          | computeflow ops retry-revert    |
| mark-reverted | admin    | FAILED          | computeflow ops mark-reverted   |

A refusal by conductor/ (operator_actions.Refused) is a 409 with its message; what
runs a flow (retry-revert) is started in the server's runner threads after
the state change is committed, and the answer is 202.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from conductor import cancel as cancel_mod
from conductor import recovery, render, repair
from persistence import operations, operator_actions
from web import auth
from web.context import ApiError, WebState

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    role: str
    states: frozenset[str]
    confirm: str
    help: str
    run: Callable[[WebState, str, str, dict], dict]
    #: 202 (something was started or requested) or 200 (a read).
    status: int = 202


def _resolve(ws: WebState, op_id: str) -> str:
    with ws.db.session() as s:
        op = operations.get(s, op_id)
        if op is None:
            raise ApiError(404, operations.not_found(s, op_id))
        return op.id


def _by(role: str) -> str:
    return f"web ({role}) {cancel_mod.operator()}"


def _refused(fn):
    """operator_actions.Refused -> 409 with its own message."""

    def wrapped(ws: WebState, op_id: str, role: str, body: dict) -> dict:
        op_id = _resolve(ws, op_id)
        try:
            return fn(ws, op_id, role, body)
        except operator_actions.Refused as e:
            raise ApiError(409, str(e)) from None

    return wrapped


@_refused
def _cancel(ws: WebState, op_id: str, role: str, body: dict) -> dict:
    """An operation this server runs only gets the request recorded
    (conductor/cancel.py): its running thread stops it at the next step."""
    res = cancel_mod.cancel(ws.conductor(), op_id, _by(role))
    o = res.outcome
    return {"id": o.op_id, "kind": o.kind, "state": res.state, "error": res.error, "owner": o.owner, "ended": res.ended}


@_refused
def _resume_plan(ws: WebState, op_id: str, role: str, body: dict) -> dict:
    (p,) = recovery.plans(ws.conductor(), op_id)
    return p.__dict__ | {"probes": [q.__dict__ for q in p.probes], "text": p.text()}


@_refused
def _retry_revert(ws: WebState, op_id: str, role: str, body: dict) -> dict:
    c = ws.conductor()
    with c.db.session() as s:
        op = operator_actions.reopen_for_revert(s, op_id, c.owner, c.lease_seconds, _by(role))
        op_id, state = op.id, op.state
    ws.runs.submit(run_logged, c, op_id)
    return {"id": op_id, "state": state}


def run_logged(c, op_id: str) -> None:
    try:
        c.run(op_id)
    except Exception:
        LOG.exception("operation %s", op_id)


@_refused
def _mark_reverted(ws: WebState, op_id: str, role: str, body: dict) -> dict:
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise ApiError(400, "note must be a string")
    item = repair.mark_reverted(ws.conductor(), op_id, _by(role), note)
    return render.operation_dict(item.op) | {
        "left_behind": [
            {"step": lb.step, "state": lb.state, "error": lb.error, "resources": lb.resources}
            for lb in item.left_behind
        ]
    }


ACTIVE = frozenset(operations.ACTIVE_STATES)
FAILED = frozenset({operations.FAILED})
ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "cancel",
            "cancel",
            auth.OPERATOR,
            ACTIVE,
            "Cancel this operation? It stops at its next step and what it did is reverted.",
            "stop at the next step and revert",
            _cancel,
        ),
        Action(
            "resume-plan",
            "what would a resume do?",
            auth.OPERATOR,
            ACTIVE,
            "",
            "computeflow resume --dry-run: probes the hosts, changes nothing",
            _resume_plan,
            200,
        ),
        Action(
            "retry-revert",
            "retry the revert",
            auth.ADMIN,
            FAILED,
            "Run the failed reverts of this operation again (fix their cause first)?",
            "computeflow ops retry-revert",
            _retry_revert,
        ),
        Action(
            "mark-reverted",
            "mark reverted",
            auth.ADMIN,
            FAILED,
            "Record that what this operation left behind was cleaned up by hand? Nothing is undone by this.",
            "computeflow ops mark-reverted",
            _mark_reverted,
            200,
        ),
    )
}


def get(name: str) -> Action:
    try:
        return ACTIONS[name]
    except KeyError:
        raise ApiError(404, f"no action {name!r} (one of {', '.join(ACTIONS)})") from None


def available(op: dict, role: str) -> list[Action]:
    """The actions `role` may use on the operation (a dict of views.operation_detail) now."""
    return [a for a in ACTIONS.values() if op["state"] in a.states and auth.allows(role, a.role)]
