"""The plan `resume --dry-run` prints must be what `resume` then does: the
crash matrices call these around their resume (compared with the flow log).

Checked on the SQLite cells only: the plan is computed from the flow log and
the hypervisor, the same rows on every backend, and each check costs a
process start (the PostgreSQL cells still prove the resume itself)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor
from persistence.models import FlowLogEntry
from tests.conftest import run_cli


def dry_run(calm: Path) -> tuple[dict, int] | None:
    """The one unfinished operation's plan, and the flow log's last row id
    (None on a server database: see the module docstring)."""
    if "sqlite://" not in calm.read_text():
        return None
    out = run_cli(calm, "resume", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    (plan,) = json.loads(out.stdout)
    assert plan["owner_status"] == "dead" and plan["direction"] in ("forward", "revert"), plan
    with Conductor(config.load([str(calm)])) as c, c.db.session() as s:
        last = (
            s.scalar(sa.select(sa.func.max(FlowLogEntry.id)).where(FlowLogEntry.flow_detail_uuid == plan["op_id"])) or 0
        )
    return plan, last


def assert_followed(calm: Path, planned: tuple[dict, int] | None) -> None:
    """forward: exactly the planned steps ran; revert: exactly they were undone."""
    if planned is None:
        return
    plan, after_id = planned
    state = "RUNNING" if plan["direction"] == "forward" else "REVERTING"
    with Conductor(config.load([str(calm)])) as c, c.db.session() as s:
        moved = set(
            s.scalars(
                sa.select(FlowLogEntry.step).where(
                    FlowLogEntry.flow_detail_uuid == plan["op_id"],
                    FlowLogEntry.id > after_id,
                    FlowLogEntry.state == state,
                )
            )
        )
    moved = {m for m in moved if not m.startswith("retry_") and m != "(flow)"}
    assert moved == set(plan["steps"]), (plan, sorted(moved))
