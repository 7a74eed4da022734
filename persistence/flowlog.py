"""The read side of the flow log: what happened to each step of an operation."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import FlowLogEntry
from persistence.progress import ANNOTATIONS

_TERMINAL = {"SUCCESS", "FAILURE", "REVERTED", "REVERT_FAILURE", "IGNORE"}


@dataclass(frozen=True)
class StepSummary:
    step: str
    state: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    attempts: int
    error: str | None
    traceback: str | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


def entries(s: Session, flow_detail_uuid: str, after_id: int = 0) -> list[FlowLogEntry]:
    """Every transition of one flow in the order it was committed."""
    return list(s.scalars(
        sa.select(FlowLogEntry)
        .where(FlowLogEntry.flow_detail_uuid == flow_detail_uuid, FlowLogEntry.id > after_id)
        .order_by(FlowLogEntry.id)
    ))


def summarize(rows: list[FlowLogEntry]) -> list[StepSummary]:
    """Fold transitions into one line per step, in the order steps first ran."""
    order: list[str] = []
    acc: dict[str, dict] = {}
    for r in rows:
        if r.step == "(flow)" or r.state in ANNOTATIONS:  # progress and requests: not moves
            continue
        a = acc.get(r.step)
        if a is None:
            order.append(r.step)
            a = acc[r.step] = {"state": r.state, "start": None, "end": None, "attempts": 0,
                               "error": None, "traceback": None}
        a["state"] = r.state
        if r.state == "RUNNING":
            a["attempts"] = max(a["attempts"], r.attempt)
            if a["start"] is None:
                a["start"] = r.at
            a["end"] = None
        elif r.state in _TERMINAL:
            a["end"] = r.at
        if r.error:
            a["error"], a["traceback"] = r.error, r.traceback
    return [StepSummary(n, acc[n]["state"], acc[n]["start"], acc[n]["end"], acc[n]["attempts"],
                        acc[n]["error"], acc[n]["traceback"]) for n in order]
