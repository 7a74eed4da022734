"""Per-host limits, as Nova's `max_concurrent_builds` and
`max_concurrent_live_migrations`: which slots an operation needs, and the
gate every run passes (conductor/runner.py) before its flow starts.

An operation beyond a limit is not failed: its run is refused with
`WaitingForHostSlot` and it keeps its place in line (in the database, so
every conductor sees it). The conductor service gives its job back and tries
again soon; an in-process run (`Conductor.run`, the embedded mode) waits.
The slots themselves, and why a killed conductor's slot is reclaimed, are
persistence/host_slots.py's.

Only work going forward needs a slot: a run that reverts (REVERTING, or a
cancel requested) undoes what is on the host and never waits in line.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy.orm import Session

from flows import catalog
from persistence import host_slots, operations
from persistence.host_slots import Need
from persistence.models import Operation
from persistence.session import Database

BUILDS, LIVE_MIGRATIONS = "builds", "live_migrations"

#: Per category, the operation kinds in it and the parameters naming the hosts
#: each needs a slot on.
_CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    BUILDS: {"spawn": ("host",), "rebuild": ("host",), "evacuate": ("dest_host",)},
    LIVE_MIGRATIONS: {"live_migration": ("host", "destination")},
}


class BadHostLimit(ValueError):
    """A `[conductor] max_concurrent_per_host` entry that names no kind or no count."""


@dataclass(frozen=True)
class HostLimits:
    """How many operations of each category may run at once on one host (0: no limit)."""

    builds: int = 10
    live_migrations: int = 1
    #: Operation kind -> limit, on every host the operation names.
    per_kind: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> HostLimits:
        opts = conf.conductor
        return cls(
            opts.max_concurrent_builds,
            opts.max_concurrent_live_migrations,
            parse_per_kind(opts.max_concurrent_per_host),
        )

    def needs(self, op: Operation) -> list[Need]:
        """The slots `op` needs before its flow may go on (none when reverting)."""
        if op.state not in (operations.PENDING, operations.RUNNING) or op.cancel_requested_by:
            return []
        return [n for n in self.lines(op.kind, op.parameters or {}) if n.limit]

    def lines(self, kind: str, params: dict) -> list[Need]:
        """Every (host, category) an operation of `kind` counts in, limited or not (limit 0)."""
        found: list[Need] = []
        for category, limit in ((BUILDS, self.builds), (LIVE_MIGRATIONS, self.live_migrations)):
            keys = _CATEGORIES[category].get(kind, ())
            found += [Need(h, category, limit) for h in _hosts(params, keys)]
        if kind in self.per_kind:
            found += [Need(h, kind, self.per_kind[kind]) for h in _hosts(params, operations.HOST_PARAMS)]
        return found

    def peak(self, s: Session, op_ids: list[str]) -> dict[tuple[str, str], int]:
        """The most of these operations that ran at once, per (category, host),
        from their started/finished times: what a benchmark or test checks
        against the limits after a burst. An operation runs between those
        times, inside its slot's holding, so a limit that held is never
        exceeded here. (A run resumed after a crash keeps its first start: it
        may count longer than it held a slot.) Timestamps come from each
        conductor's clock: compare on one machine or with synchronized clocks."""
        edges: dict[tuple[str, str], list[tuple[dt.datetime, int]]] = {}
        for chunk in range(0, len(op_ids), 500):
            for op in s.scalars(
                sa.select(Operation).where(
                    Operation.id.in_(op_ids[chunk : chunk + 500]), Operation.started_at.is_not(None)
                )
            ):
                end = op.finished_at or dt.datetime.max
                for need in self.lines(op.kind, op.parameters or {}):
                    key = (need.category, need.host)
                    edges.setdefault(key, []).extend([(op.started_at, 1), (end, -1)])
        peaks = {}
        for key, points in edges.items():
            running = peak = 0
            for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start
                running += step
                peak = max(peak, running)
            peaks[key] = peak
        return peaks


def parse_per_kind(raw: dict[str, str]) -> dict[str, int]:
    """`max_concurrent_per_host` as {kind: limit}; BadHostLimit names the bad entry."""
    limits = {}
    for kind, value in raw.items():
        if kind not in catalog.CATALOG:
            raise BadHostLimit(
                f"[conductor] max_concurrent_per_host {kind}:{value}: unknown "
                f"operation kind {kind!r} (known: {', '.join(sorted(catalog.CATALOG))})"
            )
        try:
            limit = int(value)
        except ValueError:
            limit = -1
        if limit < 0:
            raise BadHostLimit(
                f"[conductor] max_concurrent_per_host {kind}:{value}: the limit "
                "must be a whole number >= 0 (0: unlimited)"
            )
        limits[kind] = limit
    return limits


def _hosts(params: dict, keys: tuple[str, ...]) -> list[str]:
    hosts: list[str] = []
    for key in keys:
        value = params.get(key)
        if isinstance(value, str) and value and value not in hosts:
            hosts.append(value)
    return hosts


class SlotGate:
    """The runner's side of the slots: ask, take (in the ownership
    transaction), release; and a process-local signal that one was released,
    so a run waiting here tries again at once."""

    def __init__(self, limits: HostLimits, grace: float) -> None:
        self.limits, self.grace = limits, grace
        self._released = threading.Condition()
        self._generation = 0

    def request(self, s: Session, op: Operation) -> host_slots.Ask:
        """The slots `op` needs; `.waits`: those it cannot have now (its place in line is kept)."""
        needs = self.limits.needs(op)
        if not needs:
            return host_slots.Ask()
        return host_slots.request(s, op.id, op.created_at, needs, self.grace)

    @staticmethod
    def take(s: Session, op: Operation, ask: host_slots.Ask) -> None:
        if ask:
            host_slots.take(s, op.id, ask)

    def release(self, db: Database, op_id: str, owner: str) -> None:
        """Leave the operation's slots when its run stopped without an outcome
        (lost database, taken over, stopped), and wake this process's waiters."""
        with db.session() as s:
            host_slots.release(s, op_id, owner)
        self.announce_release()

    def announce_release(self) -> None:
        """Wake this process's waiters: an operation's outcome's transaction
        left its slots (Runner._finish), no second transaction needed."""
        with self._released:
            self._generation += 1
            self._released.notify_all()

    def generation(self) -> int:
        """A counter of releases in this process (compare before and after a wait)."""
        return self._generation

    def wait_for_release(self, since: int, timeout: float) -> None:
        """Until a slot is released in this process after `since`, or `timeout`
        (a release by another process is seen by asking again)."""
        with self._released:
            self._released.wait_for(lambda: self._generation != since, timeout)


def waiting(s: Session, op_ids: list[str]) -> dict[str, str]:
    """For `ops show`/`ops list`: what each of these operations waits for in
    line, in a few words ("waiting for a host slot: builds on h1")."""
    return {
        op_id: "waiting for a host slot: " + ", ".join(f"{r.category} on {r.host}" for r in rows)
        for op_id, rows in host_slots.waiting(s, op_ids).items()
    }
