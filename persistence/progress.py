"""Progress and requests of a running step, as rows of the flow log.

taskflow's own progress saves are skipped by our backend (they cost a
transaction each and say nothing a resume needs), so a long step (a live
migration) reports progress as flow-log rows of its own: state PROGRESS with
the percentage in `result`. Requests to such a step from another process
(abort, force-complete) are rows too, so one table tells the whole story in
`computeflow ops show --transitions`, and the step polls for them with one
indexed SELECT. None of these rows is a step transition: the step summary
ignores them (flowlog.summarize).

Listeners (the CLI's live output) are told about each progress row after it
was committed, in the process that wrote it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import FlowLogEntry, Operation

PROGRESS = "PROGRESS"
ABORT_REQUESTED = "ABORT_REQUESTED"
FORCE_COMPLETE_REQUESTED = "FORCE_REQUESTED"
REQUESTS = (ABORT_REQUESTED, FORCE_COMPLETE_REQUESTED)
#: Flow-log states that annotate a step instead of moving it.
ANNOTATIONS = frozenset({PROGRESS, *REQUESTS})

ProgressListener = Callable[[str, str, str, str], None]  # (operation_id, step, state, text)
_listeners: list[ProgressListener] = []
_lock = threading.Lock()


def add(s: Session, operation_id: str, step: str, state: str, text: str, epoch: int | None = None) -> bool:
    """One annotation row for `step` of the operation (whose flow detail uuid is its id).

    With the writer's ownership `epoch` the row is fenced like a step
    transition: written (and stamped with the epoch) only while the operation
    is still owned under it. Returns whether the row was added.
    """
    if state not in ANNOTATIONS:
        raise ValueError(f"{state!r} is not a progress or request state")
    if epoch is not None:
        current = s.scalar(sa.select(Operation.epoch).where(Operation.id == operation_id).with_for_update(read=True))
        if current != epoch:
            return False  # taken over: the new owner reports from now on
    s.add(
        FlowLogEntry(
            flow_detail_uuid=operation_id, atom_uuid="", step=step, state=state, attempt=0, result=text, epoch=epoch
        )
    )
    return True


def requests_after(s: Session, operation_id: str, after_id: int = 0) -> list[FlowLogEntry]:
    """Requests (abort, force-complete) made to the operation since row `after_id`."""
    return list(
        s.scalars(
            sa.select(FlowLogEntry)
            .where(
                FlowLogEntry.flow_detail_uuid == operation_id,
                FlowLogEntry.id > after_id,
                FlowLogEntry.state.in_(REQUESTS),
            )
            .order_by(FlowLogEntry.id)
        )
    )


def last_step_state(s: Session, operation_id: str, step: str) -> str | None:
    """The latest transition (not annotation) of one step, or None if it never ran."""
    return s.scalar(
        sa.select(FlowLogEntry.state)
        .where(
            FlowLogEntry.flow_detail_uuid == operation_id,
            FlowLogEntry.step == step,
            FlowLogEntry.state.not_in(ANNOTATIONS),
        )
        .order_by(FlowLogEntry.id.desc())
        .limit(1)
    )


def add_listener(fn: ProgressListener) -> None:
    with _lock:
        _listeners.append(fn)


def remove_listener(fn: ProgressListener) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def notify(operation_id: str, step: str, text: str, state: str = PROGRESS) -> None:
    """Tell this process's listeners about a committed progress row, or a
    step's retry (RETRYING, then RUNNING: flows/steps/attempts.py)."""
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(operation_id, step, state, text)
