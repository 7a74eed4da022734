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
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from persistence.models import HostSlot, Operation, utcnow
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


def _held_by_live_owner(now: dt.datetime) -> sa.Exists:
    """The row's operation still runs under a live lease (its slot counts)."""
    return sa.exists().where(
        Operation.id == HostSlot.operation_id,
        Operation.state.in_(_ACTIVE),
        Operation.owner.is_not(None),
        Operation.lease_expires_at >= now,
    )


def request(s: Session, op_id: str, queued_at: dt.datetime, needs: list[Need], grace: float) -> list[Wait]:
    """Record (or refresh) the operation's place in each line; return the
    needs it cannot have now (empty: `take` will succeed but for a race).

    There is room on a line when the live holders other than this operation
    plus those waiting before it (earlier submission, asked within `grace`
    seconds) leave a slot free: a later operation never overtakes an earlier
    one waiting for the same host.
    """
    now = utcnow()
    fresh = now - dt.timedelta(seconds=grace)
    mine = {(r.host, r.category): r for r in s.scalars(sa.select(HostSlot).where(HostSlot.operation_id == op_id))}
    waits = []
    for need in needs:
        row = mine.get((need.host, need.category))
        if row is None:
            s.add(
                HostSlot(operation_id=op_id, host=need.host, category=need.category, queued_at=queued_at, asked_at=now)
            )
            try:
                s.flush()
            except sa_exc.IntegrityError:  # another run of it asked at the same moment
                raise SlotRace(need) from None
        else:
            row.asked_at = now
            if row.slot is not None:
                continue  # already ours (a resumed or taken-over run)
        line = (HostSlot.host == need.host, HostSlot.category == need.category)
        held = (
            sa.select(sa.func.count())
            .select_from(HostSlot)
            .where(*line, HostSlot.slot.is_not(None), HostSlot.operation_id != op_id, _held_by_live_owner(now))
        )
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
        )
        # Both counts in one round trip: an idle submission's path to its first step.
        held, ahead = s.execute(sa.select(held.scalar_subquery(), ahead.scalar_subquery())).one()
        if held + ahead >= need.limit:
            waits.append(Wait(need.host, need.category, need.limit, held, ahead))
    return waits


def take(s: Session, op_id: str, needs: list[Need]) -> None:
    """Give the operation a slot number on each line (after `request` found
    room, in the transaction that made it the owner). A number held by no
    live owner is reclaimed; SlotRace when another conductor was faster."""
    now = utcnow()
    for need in needs:
        line = (HostSlot.host == need.host, HostSlot.category == need.category)
        numbered = s.execute(
            sa.select(HostSlot.operation_id, HostSlot.slot, _held_by_live_owner(now)).where(
                *line, HostSlot.slot.is_not(None)
            )
        ).all()
        if any(holder == op_id for holder, _, _ in numbered):
            continue  # already ours (a resumed or taken-over run)
        used: dict[int, bool] = {number: live for _, number, live in numbered if number is not None}
        free = [n for n in range(need.limit) if n not in used]
        if free:
            number = free[0]
        else:
            stale = [n for n in range(need.limit) if not used[n]]
            if not stale:
                raise SlotRace(need)
            number = stale[0]
            if not _reclaim(s, need, number, now):
                raise SlotRace(need)
        try:
            s.execute(
                sa.update(HostSlot).where(HostSlot.operation_id == op_id, *line).values(slot=number, taken_at=now)
            )
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
