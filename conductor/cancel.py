"""Cancelling an operation: which kinds may be cancelled, and the operator's
entry point.

The request is a record (persistence.operator_actions.request_cancel): a pending
operation that no live conductor owns ends at once, without running a step;
otherwise its owner's lease keeper sees the request at its next renewal and
the operation's next step raises `Cancelled`, so taskflow reverts what was
done and the operation ends REVERTED, "cancelled by ...". When the owner is
gone (dead process, lapsed lease), the canceller takes the operation over
and performs that revert itself.

Forward-only operations (destroy, confirm-resize, revert-resize, reconcile:
`forward_only` in the catalogue) cannot be cancelled once running: past
their hold they only go forward.

`terminate` is for an owner that is alive but stuck (a hypervisor call that
hangs until `step_timeout`): the operation is taken from it (the epoch
bump fences whatever it still writes; its hung call is abandoned) and run
here, reverted when a cancel may still apply, else finished forward.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass

from conductor import ownership
from flows import catalog
from persistence import operations, operator_actions


def forward_only_kinds() -> set[str]:
    """Kinds that only go forward once past their hold: a field of the
    catalogue (OperationKind.forward_only), never guessed from names."""
    return {k.name for k in catalog.CATALOG.values() if k.forward_only}


def request(s, op_id: str, by: str, dead_owners: tuple[str, ...] = ()) -> operator_actions.CancelOutcome:
    """Record a cancel (persistence.operator_actions.request_cancel) under the
    catalogue's rules for the operation's kind: forward-only kinds, and the
    step past which a kind only goes forward."""
    op = operations.get(s, op_id)
    if op is None:
        raise operator_actions.Refused(operations.not_found(s, op_id))
    return operator_actions.request_cancel(s, op.id, by, dead_owners=dead_owners, **cancel_policy(op.kind))


def cancel_policy(kind: str) -> dict:
    k = catalog.CATALOG.get(kind)
    return {"forward_only": bool(k and k.forward_only), "no_return_step": k.no_return_step if k else None}


def past_no_return(s, op) -> bool:
    """Whether a started operation only goes forward now."""
    policy = cancel_policy(op.kind)
    return op.state != operations.PENDING and (
        policy["forward_only"] or operations.forward_phase_started(s, op.id, policy["no_return_step"])
    )


def operator() -> str:
    """Who is asking, as recorded with a cancel or a repair."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container is not an error
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class CancelResult:
    outcome: operator_actions.CancelOutcome
    #: The operation's state when we stopped looking (final if it ended).
    state: str
    error: str | None

    @property
    def ended(self) -> bool:
        return self.state in operations.FINAL_STATES


def cancel(conductor, op_id: str, by: str, *, wait: float = 0.0) -> CancelResult:
    """Cancel `op_id` (see the module docstring); wait up to `wait` seconds
    for a live owner to finish reverting it. Raises operator_actions.Refused."""
    from conductor.runner import LostOwnership, NotOwner  # the runner's stack only when needed

    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        dead = (op.owner,) if op is not None and op.owner and ownership.is_dead(op.owner) else ()
        outcome = request(s, op_id, by, dead)
    # This very process runs it (an API server's own run): its lease keeper flags
    # the request; taking it over here would run the flow a second time.
    if not outcome.done and outcome.owner != conductor.owner:
        try:  # the owner is gone: take it over; its first step sees the request
            conductor.runner.run(outcome.op_id, dead_owners=dead)
        except (NotOwner, LostOwnership):
            pass  # a live conductor runs it and stops it at its next step boundary
    deadline = time.monotonic() + wait
    while True:
        with conductor.db.session() as s:
            op = operations.get(s, outcome.op_id)
            state, error = op.state, op.error
        if state in operations.FINAL_STATES or time.monotonic() >= deadline:
            return CancelResult(outcome, state, error)
        time.sleep(0.1)


@dataclass(frozen=True)
class TerminateResult:
    op_id: str
    kind: str
    former_owner: str | None
    #: Whether it was reverted (cancellable) or finished forward (past its point of no return).
    direction: str
    state: str
    error: str | None


def terminate(conductor, op_id: str, by: str, on_event=None) -> TerminateResult:
    """Take `op_id` from its owner, whatever that owner's state, and end it
    from this process (see the module docstring). Raises operator_actions.Refused."""
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        if op is None:
            raise operator_actions.Refused(operations.not_found(s, op_id))
        if op.state in operations.FINAL_STATES:
            raise operator_actions.Refused(f"operation {op.id} already ended {op.state}: nothing to terminate")
        forward = past_no_return(s, op)
        if not forward and op.cancel_requested_by is None:
            outcome = request(s, op.id, f"{by} (terminate)")
            if outcome.done:  # pending and nobody's: ended without running a step
                return TerminateResult(
                    op.id, op.kind, op.owner, "revert", outcome.state, f"cancelled by {by} (terminate) before it ran"
                )
        former = operator_actions.seize(s, op.id, conductor.owner, conductor.lease_seconds, by)
        op_id, kind = op.id, op.kind
    ended = conductor.runner.run(op_id, on_event=on_event)
    return TerminateResult(op_id, kind, former, "forward" if forward else "revert", ended.state, ended.error)
