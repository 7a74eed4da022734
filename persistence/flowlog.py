"""The read side of the flow log: what happened to each step of an operation."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import FLOW_STEP, FlowLogEntry, Operation
from persistence.progress import ANNOTATIONS

_EXECUTE_ENDS = {"SUCCESS", "FAILURE", "IGNORE"}
_REVERT_ENDS = {"REVERTED", "REVERT_FAILURE"}


@dataclass(frozen=True)
class StepSummary:
    """One step of an operation: its latest state, and its execute and revert
    phases apart. A phase's time is the sum of its attempts' own spans: the
    backoff between attempts, a crash before a resume and an operator's wait
    before `retry-revert` are not the step's work and are not counted."""

    step: str
    state: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    attempts: int  # execute attempts
    error: str | None
    traceback: str | None
    execute_s: float | None = None
    revert_attempts: int = 0
    revert_s: float | None = None
    #: When the attempt still in progress began (None: none is).
    attempt_since: dt.datetime | None = None

    @property
    def duration_s(self) -> float | None:
        """Execute and revert time together (None: neither attempt ended)."""
        spans = [t for t in (self.execute_s, self.revert_s) if t is not None]
        return sum(spans) if spans else None


def entries(s: Session, flow_detail_uuid: str, after_id: int = 0) -> list[FlowLogEntry]:
    """Every transition of one flow in the order it was committed."""
    return list(
        s.scalars(
            sa.select(FlowLogEntry)
            .where(FlowLogEntry.flow_detail_uuid == flow_detail_uuid, FlowLogEntry.id > after_id)
            .order_by(FlowLogEntry.id)
        )
    )


@dataclass
class _Fold:
    """A step's transitions being folded (see summarize)."""

    state: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    phase: str = "execute"
    open_since: dt.datetime | None = None  # the attempt in progress
    attempts: dict[str, int] = field(default_factory=lambda: {"execute": 0, "revert": 0})
    spent: dict[str, float | None] = field(default_factory=lambda: {"execute": None, "revert": None})
    error: str | None = None
    traceback: str | None = None

    def open(self, phase: str, at: dt.datetime) -> None:
        self.phase, self.open_since = phase, at
        self.attempts[phase] += 1

    def close(self, at: dt.datetime) -> None:
        if self.open_since is not None:
            took = (at - self.open_since).total_seconds()
            self.spent[self.phase] = (self.spent[self.phase] or 0.0) + took
        self.open_since = None

    def add(self, r: FlowLogEntry) -> None:
        prior, self.state = self.state, r.state
        if r.state == "RUNNING":
            # A retry of the revert logs RUNNING too (flows/steps/attempts.py).
            phase = "revert" if self.phase == "revert" and prior == "RETRYING" else "execute"
            self.open(phase, r.at)
            self.start = self.start or r.at
            self.end = None
        elif r.state == "REVERTING":
            self.open("revert", r.at)
        elif r.state == "RETRYING" or r.state in _EXECUTE_ENDS or r.state in _REVERT_ENDS:
            self.close(r.at)
            if r.state != "RETRYING":
                self.end = r.at
        if r.error:
            self.error, self.traceback = r.error, r.traceback


def summarize(rows: list[FlowLogEntry]) -> list[StepSummary]:
    """Fold transitions into one line per step, in the order steps first ran."""
    folds: dict[str, _Fold] = {}
    for r in rows:
        if r.step == FLOW_STEP or r.state in ANNOTATIONS:  # progress and requests: not moves
            continue
        fold = folds.get(r.step)
        if fold is None:
            fold = folds[r.step] = _Fold("PENDING")
        fold.add(r)
    return [
        StepSummary(
            name,
            f.state,
            f.start,
            f.end,
            f.attempts["execute"],
            f.error,
            f.traceback,
            f.spent["execute"],
            f.attempts["revert"],
            f.spent["revert"],
            f.open_since,
        )
        for name, f in folds.items()
    ]


@dataclass(frozen=True)
class ChangeMarker:
    """What changes whenever an operation's page would: its row's state,
    owner and cancel request, and its newest flow-log row (id and time)."""

    state: str
    owner: str | None
    cancel_requested_by: str | None
    last_row: int
    last_at: dt.datetime | None


def change_marker(s: Session, op_id: str) -> ChangeMarker | None:
    """One cheap query (the flow log's (flow, id) index) for live updates to
    poll; None for an unknown operation id (a full id, not a prefix)."""
    newest = sa.select(sa.func.max(FlowLogEntry.id)).where(FlowLogEntry.flow_detail_uuid == op_id).scalar_subquery()
    row = s.execute(
        sa.select(Operation.state, Operation.owner, Operation.cancel_requested_by, newest).where(Operation.id == op_id)
    ).first()
    if row is None:
        return None
    last_at = s.scalar(sa.select(FlowLogEntry.at).where(FlowLogEntry.id == row[3])) if row[3] else None
    return ChangeMarker(row[0], row[1], row[2], row[3] or 0, last_at)
