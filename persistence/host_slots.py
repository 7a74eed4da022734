"""Per-host slots: at most N operations of a category at once on a host,
across every conductor, with a line in submission order for the others.

A row of `host_slots` is one operation's place on one host for one category
("builds", "live_migrations", an operation kind). `slot` NULL: it waits in
line; a number 0..N-1: it holds that slot. The unique (host, category, slot)
is the bound: two conductors taking the same number collide in the database
(`SlotRace`), never both succeed.

Nothing is tied to a process. A slot counts as held while its operation is
unfinished, owned, and its owner's lease is alive; so a slot of an ended
operation, a suspended one, or one whose conductor was killed (its lease
lapses) is reclaimed by the next taker of that number. A place in line counts
while someone keeps asking for it (`asked_at` within `grace`), so an orphan
nobody runs does not hold up the operations behind it.

The caller (conductor/host_limits.py) calls `request` and, in the same
transaction once it owns the operation, `take`; `release` when its run ends.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from persistence.models import HostSlot, Operation, Timestamp, utcnow
from persistence.session import changed

_ACTIVE = ("PENDING", "RUNNING", "REVERTING")  # operations.ACTIVE_STATES (it imports us)


@dataclass(frozen=True)
class Need:
    """One slot an operation needs: `category` work on `host`, at most `limit` at once."""

    host: str
    category: str
    limit: int


@dataclass(frozen=True)
class Wait:
    """A need that cannot be met now, and why: `held` of `limit` taken, `ahead` waiting first."""

    host: str
    category: str
    limit: int
    held: int
    ahead: int

    def __str__(self) -> str:
        line = f", {self.ahead} ahead in line" if self.ahead else ""
        return f"{self.category} on {self.host}: {self.held} of {self.limit} taken{line}"


class SlotRace(Exception):
    """Another conductor took the slot number this one chose; try again."""

    def __init__(self, need: Need) -> None:
        super().__init__(f"{need.category} on {need.host}: a slot was taken meanwhile")
        self.wait = Wait(need.host, need.category, need.limit, need.limit, 0)


def _held_by_live_owner(now: dt.datetime | sa.BindParameter[dt.datetime]) -> sa.Exists:
    """The row's operation still runs under a live lease (its slot counts)."""
    return sa.exists().where(
        Operation.id == HostSlot.operation_id,
        Operation.state.in_(_ACTIVE),
        Operation.owner.is_not(None),
        Operation.lease_expires_at >= now,
    )


@dataclass
class _Line:
    """What `request` read of one line, for `take` in the same transaction."""

    need: Need
    #: Whether this operation has a row on the line (it asked before).
    asked: bool
    #: The number it holds there (None: it waits in line, or never asked).
    slot: int | None
    #: Numbers held by other operations on the line -> whether under a live lease.
    others: dict[int, bool]


@dataclass
class Ask:
    """The outcome of `request`: the needs that must wait, and what `take` uses."""

    waits: list[Wait] = field(default_factory=list)
    lines: list[_Line] = field(default_factory=list)
    queued_at: dt.datetime | None = None

    def __bool__(self) -> bool:
        """Whether the operation needs any slot at all."""
        return bool(self.lines)


@functools.cache
def _line_read() -> sa.Select[Any]:
    """One line's numbered rows, the asking operation's own row and the count
    of those ahead of it in line, in one round trip (the outer join keeps the
    count when no row matches). Built once: building it costs ~1 ms of Python
    a run on a slow core, more than the server takes to answer."""
    op_id: sa.BindParameter[str] = sa.bindparam("op_id", type_=sa.String())
    host: sa.BindParameter[str] = sa.bindparam("host", type_=sa.String())
    category: sa.BindParameter[str] = sa.bindparam("category", type_=sa.String())
    queued_at: sa.BindParameter[dt.datetime] = sa.bindparam("queued_at", type_=Timestamp)
    fresh: sa.BindParameter[dt.datetime] = sa.bindparam("fresh", type_=Timestamp)
    now: sa.BindParameter[dt.datetime] = sa.bindparam("now", type_=Timestamp)
    line = (HostSlot.host == host, HostSlot.category == category)
    ahead = (
        sa.select(sa.func.count())
        .select_from(HostSlot)
        .where(
            *line,
            HostSlot.slot.is_(None),
            HostSlot.asked_at >= fresh,
            sa.or_(
                HostSlot.queued_at < queued_at,
                sa.and_(HostSlot.queued_at == queued_at, HostSlot.operation_id < op_id),
            ),
            sa.exists().where(
                Operation.id == HostSlot.operation_id,
                Operation.state.in_(_ACTIVE),
                Operation.cancel_requested_by.is_(None),
            ),
        )
        .scalar_subquery()
    )
    rows = (
        sa.select(HostSlot.operation_id, HostSlot.slot, _held_by_live_owner(now).label("live"))
        .where(*line, sa.or_(HostSlot.slot.is_not(None), HostSlot.operation_id == op_id))
        .subquery()
    )
    one = sa.select(sa.literal(1).label("one")).subquery()
    return sa.select(ahead, rows.c.operation_id, rows.c.slot, rows.c.live).select_from(one.outerjoin(rows, sa.true()))


def request(s: Session, op_id: str, queued_at: dt.datetime, needs: list[Need], grace: float) -> Ask:
    """Read each line once; record (or refresh) the operation's place in the
    lines it must wait in. `Ask.waits`: the needs it cannot have now (empty:
    `take` will succeed but for a race).

    There is room on a line when the live holders other than this operation
    plus those waiting before it (earlier submission, asked within `grace`
    seconds) leave a slot free: a later operation never overtakes an earlier
    one waiting for the same host. An operation that has room is entered on
    the line by `take`, with its number: one statement, not two.
    """
    now = utcnow()
    fresh = now - dt.timedelta(seconds=grace)
    ask = Ask(queued_at=queued_at)
    for need in needs:
        read = s.execute(
            _line_read(),
            {
                "op_id": op_id,
                "host": need.host,
                "category": need.category,
                "queued_at": queued_at,
                "fresh": fresh,
                "now": now,
            },
        ).all()
        waiting = read[0][0]
        mine = [r for r in read if r.operation_id == op_id]
        others = {r.slot: bool(r.live) for r in read if r.operation_id not in (None, op_id)}
        entry = _Line(need, bool(mine), mine[0].slot if mine else None, others)
        ask.lines.append(entry)
        if entry.slot is not None:
            continue  # already ours (a resumed or taken-over run)
        held = sum(others.values())
        if held + waiting < need.limit:
            continue
        ask.waits.append(Wait(need.host, need.category, need.limit, held, waiting))
        _keep_place(s, op_id, entry, queued_at, now)
    return ask


def _keep_place(s: Session, op_id: str, entry: _Line, queued_at: dt.datetime, now: dt.datetime) -> None:
    """Enter the line, or say this operation still waits in it (`asked_at`)."""
    need = entry.need
    if entry.asked:
        s.execute(
            sa.update(HostSlot)
            .where(HostSlot.operation_id == op_id, HostSlot.host == need.host, HostSlot.category == need.category)
            .values(asked_at=now)
            .execution_options(synchronize_session=False)
        )
        return
    try:
        s.execute(
            sa.insert(HostSlot).values(
                operation_id=op_id, host=need.host, category=need.category, queued_at=queued_at, asked_at=now
            )
        )
    except sa_exc.IntegrityError:  # another run of it asked at the same moment (the transaction is lost)
        raise SlotRace(need) from None


def take(s: Session, op_id: str, ask: Ask) -> None:
    """Give the operation a slot number on each line (after `request` found
    room, in the transaction that made it the owner), from what `request`
    read. A number held by no live owner is reclaimed; SlotRace when another
    conductor was faster."""
    now = utcnow()
    for entry in ask.lines:
        if entry.slot is not None:
            continue  # already ours (a resumed or taken-over run)
        need = entry.need
        free = [n for n in range(need.limit) if n not in entry.others]
        if free:
            number = free[0]
        else:
            stale = [n for n in range(need.limit) if not entry.others[n]]
            if not stale:
                raise SlotRace(need)
            number = stale[0]
            if not _reclaim(s, need, number, now):
                raise SlotRace(need)
        statement: sa.Executable
        if entry.asked:
            statement = (
                sa.update(HostSlot)
                .where(HostSlot.operation_id == op_id, HostSlot.host == need.host, HostSlot.category == need.category)
                .values(slot=number, taken_at=now, asked_at=now)
                .execution_options(synchronize_session=False)
            )
        else:
            statement = sa.insert(HostSlot).values(
                operation_id=op_id,
                host=need.host,
                category=need.category,
                queued_at=ask.queued_at,
                asked_at=now,
                slot=number,
                taken_at=now,
            )
        try:
            s.execute(statement)
        except (sa_exc.IntegrityError, sa_exc.OperationalError) as e:
            if isinstance(e, sa_exc.OperationalError) and "deadlock" not in str(e).lower():
                raise
            raise SlotRace(need) from None


def _reclaim(s: Session, need: Need, number: int, now: dt.datetime) -> bool:
    """Take slot `number` back from an operation that no longer runs under a
    live lease: it keeps its place in line if it is unfinished, else its row
    goes. False if it runs again (taken over meanwhile)."""
    row = (
        HostSlot.host == need.host,
        HostSlot.category == need.category,
        HostSlot.slot == number,
        ~_held_by_live_owner(now),
    )
    ended = ~sa.exists().where(Operation.id == HostSlot.operation_id, Operation.state.in_(_ACTIVE))
    gone = changed(s, sa.delete(HostSlot).where(*row, ended).execution_options(synchronize_session=False))
    return (
        gone
        + changed(
            s,
            sa.update(HostSlot)
            .where(*row)
            .values(slot=None, taken_at=None)
            .execution_options(synchronize_session=False),
        )
        == 1
    )


def release(s: Session, op_id: str, owner: str) -> int:
    """Leave every line and slot of the operation, unless another conductor
    owns it now (a take-over keeps its slots). Returns the rows removed."""
    taken_over = sa.exists().where(
        Operation.id == op_id, Operation.state.in_(_ACTIVE), Operation.owner.is_not(None), Operation.owner != owner
    )
    return changed(
        s,
        sa.delete(HostSlot)
        .where(HostSlot.operation_id == op_id, ~taken_over)
        .execution_options(synchronize_session=False),
    )


def forget(s: Session, op_id: str) -> None:
    """The operation ended without running (cancelled while queued): leave its lines."""
    s.execute(sa.delete(HostSlot).where(HostSlot.operation_id == op_id).execution_options(synchronize_session=False))


def waiting(s: Session, op_ids: list[str]) -> dict[str, list[HostSlot]]:
    """The lines each of these operations waits in (slot not yet taken)."""
    found: dict[str, list[HostSlot]] = {}
    if op_ids:
        for row in s.scalars(
            sa.select(HostSlot)
            .where(HostSlot.operation_id.in_(op_ids), HostSlot.slot.is_(None))
            .order_by(HostSlot.host, HostSlot.category)
        ):
            found.setdefault(row.operation_id, []).append(row)
    return found


def holders(s: Session, host: str, category: str) -> list[str]:
    """Operations holding a slot of `category` on `host` under a live lease."""
    return list(
        s.scalars(
            sa.select(HostSlot.operation_id)
            .where(
                HostSlot.host == host,
                HostSlot.category == category,
                HostSlot.slot.is_not(None),
                _held_by_live_owner(utcnow()),
            )
            .order_by(HostSlot.slot)
        )
    )
