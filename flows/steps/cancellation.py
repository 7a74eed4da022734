"""Which operations this process is running, and which were asked to stop.

Checking the database before every step would put a read on the hot path, so
the conductor's lease keeper (which already writes every lease_seconds/3)
reads the cancel requests of the operations it renews in the same transaction
and sets a flag here. A step checks the flag, a dictionary lookup, before its
execute and raises `Cancelled`: taskflow then reverts what the operation did,
exactly as after any other failure. A cancel therefore takes effect at the
next step boundary after the keeper saw it (at most lease_seconds/3 later).

The record also carries the run's owner and epoch, which a step's retries use
to write their attempt rows only while this process still owns the operation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from flows.errors import OperationError


class Cancelled(OperationError):
    """Raised by a step of an operation someone asked to cancel."""

    def __init__(self, op_id: str, by: str) -> None:
        super().__init__(f"cancelled by {by}")
        self.op_id = op_id
        self.by = by


class TakenOver(OperationError):
    """Raised in a step whose operation another process took (`computeflow
    terminate`): the call it waited for is abandoned, nothing more is done here."""

    def __init__(self, op_id: str, step: str) -> None:
        super().__init__(
            f"operation {op_id} was taken over by another process while step {step} ran; its call is abandoned here"
        )
        self.op_id = op_id


@dataclass
class Run:
    """One operation running in this process."""

    op_id: str
    owner: str
    epoch: int | None
    cancelled_by: str | None = None
    #: The step past which this operation's kind only goes forward (the catalogue's).
    no_return_step: str | None = None
    #: The flow entered a forward-only phase: a cancel no longer applies.
    past_no_return: bool = False
    #: Another process took the operation (its lease renewal found it gone).
    lost: bool = False
    #: Set when a cancel arrives: a step sleeping between retries wakes up.
    wake: threading.Event = field(default_factory=threading.Event)
    #: Called once when the operation is lost: steps waiting for a call give it up.
    _on_lost: set[Callable[[], None]] = field(default_factory=set)

    def when_lost(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback()` (on the lease keeper's thread) as soon as the
        operation is taken from this process; returns the function that
        unregisters it, or None if the operation is lost already."""
        with _lock:
            if self.lost:
                return None
            self._on_lost.add(callback)
        return lambda: self._on_lost.discard(callback)


_runs: dict[str, Run] = {}
_lock = threading.Lock()


def enter(
    op_id: str, owner: str, epoch: int | None, cancelled_by: str | None = None, no_return_step: str | None = None
) -> Run:
    run = Run(op_id, owner, epoch, no_return_step=no_return_step)
    with _lock:
        _runs[op_id] = run
    if cancelled_by:
        request(op_id, cancelled_by)
    return run


def leave(op_id: str) -> None:
    with _lock:
        _runs.pop(op_id, None)


def get(op_id: str | None) -> Run | None:
    return _runs.get(op_id) if op_id else None


def request(op_id: str, by: str) -> bool:
    """Flag an operation running here as cancelled; True if this call flagged it."""
    run = _runs.get(op_id)
    if run is None or run.cancelled_by is not None:
        return False
    run.cancelled_by = by
    run.wake.set()
    return True


def lose(op_id: str) -> bool:
    """Flag an operation running here as taken over; True if this call flagged it."""
    with _lock:
        run = _runs.get(op_id)
        if run is None or run.lost:
            return False
        run.lost = True
        callbacks, run._on_lost = list(run._on_lost), set()
    run.wake.set()
    for callback in callbacks:
        callback()
    return True


def check(op_id: str | None) -> None:
    """Raise Cancelled if the operation was asked to stop (no I/O)."""
    if op_id is None:
        return
    run = _runs.get(op_id)
    if run is not None and run.cancelled_by is not None and not run.past_no_return:
        raise Cancelled(op_id, run.cancelled_by)
