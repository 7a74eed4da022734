"""What `ops show` says about an unfinished operation beyond its flow log:
who runs it and whether that owner still lives, its lease, a pending cancel,
and how long the step now running has run against its deadline. An orphan
(owner dead or lease lapsed) must never look like a running operation."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from conductor.recovery import owner_status
from persistence import operations
from persistence.flowlog import StepSummary
from persistence.models import Operation, utcnow


@dataclass(frozen=True)
class LiveFacts:
    #: A few words after the state: "owner alive", "ORPHANED: ...", "needs repair".
    situation: str
    lines: list[str] = field(default_factory=list)
    owner_status: str = "none"

    def to_dict(self) -> dict:
        return {"situation": self.situation, "owner_status": self.owner_status, "notes": self.lines}


def facts(
    op: Operation,
    steps: list[StepSummary],
    step_timeout: float,
    now: dt.datetime | None = None,
    waiting_for: str | None = None,
) -> LiveFacts:
    """`waiting_for`: the host slots it waits for in line (conductor/host_limits.py)."""
    now = now or utcnow()
    if op.state == operations.FAILED:
        return LiveFacts(
            f"needs repair: `computeflow ops retry-revert {op.id}` once the cause "
            "is fixed, or `ops mark-reverted` after cleaning up by hand"
        )
    if op.state not in operations.ACTIVE_STATES:
        return LiveFacts("")
    status = owner_status(op, now)
    lines = []
    if op.owner:
        lease = f", lease until {op.lease_expires_at:%Y-%m-%d %H:%M:%S}Z" if op.lease_expires_at else ""
        lines.append(f"owner     {op.owner} ({status}{lease})")
    if op.cancel_requested_by:
        lines.append(f"cancel    requested by {op.cancel_requested_by} at {op.cancel_requested_at:%Y-%m-%d %H:%M:%S}Z")
    for st in steps:
        if st.attempt_since is None or st.state not in ("RUNNING", "REVERTING"):
            continue
        ran = (now - st.attempt_since).total_seconds()
        if status != "alive":
            lines.append(f"step      {st.step} was {st.state.lower()} when its owner stopped ({ran:.1f}s ago)")
            continue
        deadline = f" of its {step_timeout:g}s deadline" if step_timeout else " (no deadline)"
        lines.append(f"step      {st.step} {st.state.lower()} for {ran:.1f}s{deadline}")
    if status == "alive":
        situation = "owner alive"
    elif status == "none":
        situation = (
            "not started by any conductor yet"
            if op.state == operations.PENDING
            else f"ORPHANED: no owner; `computeflow resume {op.id}` finishes it"
        )
    else:
        situation = f"ORPHANED: owner {status}; `computeflow resume --dry-run {op.id}` says what a resume would do"
    if waiting_for:  # queued behind a per-host limit: not orphaned, not running
        situation = waiting_for
    return LiveFacts(situation, lines, status)
