"""Cancelling an operation: which kinds may be cancelled, and the operator's
entry point.

The request is a record (persistence.operations.request_cancel): a pending
operation that no live conductor owns ends at once, without running a step;
otherwise its owner's lease keeper sees the request at its next renewal and
the operation's next step raises `Cancelled`, so taskflow reverts what was
done and the operation ends REVERTED, "cancelled by ...". When the owner is
gone (dead process, lapsed lease), the canceller takes the operation over
and performs that revert itself.

Forward-only operations (destroy, confirm-resize, revert-resize, reconcile:
`forward_only` in the catalogue) cannot be cancelled once running: past
their hold they only go forward.
"""
from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass

from conductor import ownership
from flows import catalog
from persistence import operations


def forward_only_kinds() -> set[str]:
    """Kinds that only go forward once past their hold: a field of the
    catalogue (OperationKind.forward_only), never guessed from names."""
    return {k.name for k in catalog.CATALOG.values() if k.forward_only}


# persistence imports no flows: tell it which kinds refuse a cancel once running.
operations.FORWARD_ONLY_KINDS.update(forward_only_kinds())


def operator() -> str:
    """Who is asking, as recorded with a cancel or a repair."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container is not an error
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class CancelResult:
    outcome: operations.CancelOutcome
    #: The operation's state when we stopped looking (final if it ended).
    state: str
    error: str | None

    @property
    def ended(self) -> bool:
        return self.state in operations.FINAL_STATES


def cancel(conductor, op_id: str, by: str, *, wait: float = 0.0) -> CancelResult:
    """Cancel `op_id` (see the module docstring); wait up to `wait` seconds
    for a live owner to finish reverting it. Raises operations.Refused."""
    from conductor.runner import LostOwnership, NotOwner  # runner imports this module

    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        dead = (op.owner,) if op is not None and op.owner and ownership.is_dead(op.owner) else ()
        outcome = operations.request_cancel(s, op_id, by, dead_owners=dead)
    if not outcome.done:
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
