"""The operations history as it is read: newest first by (created_at, id),
filtered in SQL, in keyset pages (`computeflow ops list`, the web API and
pages).

A page is a range of an index ending in (created_at, id) (migration 0008):
the whole history's, a state's, a kind's, an instance's (its uuid found by
the uuid index or the (name, live_marker) unique index), or the operations
with an error (`has_error`). It starts from the previous page's last row, so
it costs the same at the start, the middle or the end of the history.

Two filters look inside rows: the host (the instance's host, or a host the
parameters name: JSON) and the error text (a substring, any case). A page
that uses them reads its index until it has its rows; with `scan`, it stops
after that many operations of the index and says where (`scanned_to`), so a
host that ran a handful of operations does not make one request read the
whole history: the next page goes on from there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from persistence.models import Instance, Operation
from persistence.operations import HOST_PARAMS

Position = tuple[dt.datetime, str]  # an operation's (created_at, id): the history's order


@dataclass(frozen=True)
class HistoryFilter:
    """What `computeflow ops list` narrows the history to; None: any."""

    instance: str | None = None  # a name (every instance that had it, deleted too) or a uuid
    kind: str | None = None
    state: str | None = None
    host: str | None = None  # the instance's host, or a host in HOST_PARAMS
    since: dt.datetime | None = None  # created at or after (UTC, naive)
    until: dt.datetime | None = None  # created at or before (UTC, naive)
    error: str | None = None  # substring of the error, case-insensitive


@dataclass(frozen=True)
class Cursor:
    """Where a page of the history (newest first) starts: the operations
    older than the position (`older`), or the ones just newer than it. With
    no position: the newest page (`older`) or the oldest one (the last page)."""

    older: bool = True
    created_at: dt.datetime | None = None
    id: str | None = None

    @property
    def position(self) -> Position | None:
        return None if self.created_at is None or self.id is None else (self.created_at, self.id)


#: The first page, newest first; and the last one (the oldest operations).
NEWEST, OLDEST = Cursor(), Cursor(older=False)


@dataclass(frozen=True)
class Page:
    rows: list[tuple[Operation, str | None]]  # newest first, each with its instance's name
    #: The farthest operation a bounded read (`scan`) read before it found
    #: its `limit` rows; None: the read was not cut short.
    scanned_to: Position | None = None


def read_page(s: Session, f: HistoryFilter, limit: int, cursor: Cursor = NEWEST, scan: int | None = None) -> Page:
    """Up to `limit` operations from `cursor`, newest first; without `scan`,
    reading as far as it takes to find them (`ops list`). With `scan`, a
    host or error search reads at most `scan` operations of the index it
    walks (the first query finds the last of them: an index-only walk);
    when that is too few to find `limit`, the page says where it stopped."""
    older = cursor.older
    order = (
        (Operation.created_at.desc(), Operation.id.desc())
        if older
        else (Operation.created_at.asc(), Operation.id.asc())
    )
    indexed = _indexed_terms(f)
    if cursor.position is not None:
        indexed += _past(cursor.position, older)
    inside = _inside_terms(f)
    bound = None
    if scan is not None and inside and not f.instance:  # an instance's history is short
        row = s.execute(
            sa.select(Operation.created_at, Operation.id).where(*indexed).order_by(*order).offset(scan - 1).limit(1)
        ).first()
        if row is not None:
            bound = (row.created_at, row.id)
            indexed += _up_to(bound, older)
    q = (
        sa.select(Operation, Instance.name)
        .outerjoin(Instance, Instance.uuid == Operation.instance_uuid)
        .where(*indexed, *inside)
        .order_by(*order)
        .limit(limit)
    )
    rows: list[tuple[Operation, str | None]] = [(op, name) for op, name in s.execute(q)]
    return Page(rows if older else rows[::-1], scanned_to=bound if bound is not None and len(rows) < limit else None)


def _indexed_terms(f: HistoryFilter) -> list[Any]:
    """The filters an index answers: each leads an index ending in (created_at, id)."""
    terms: list[Any] = []
    if f.instance:
        named = sa.select(Instance.uuid).where(sa.or_(Instance.name == f.instance, Instance.uuid == f.instance))
        terms.append(Operation.instance_uuid.in_(named))
    if f.kind:
        terms.append(Operation.kind == f.kind)
    if f.state:
        terms.append(Operation.state == f.state)
    if f.error:
        terms.append(Operation.has_error == sa.true())
    if f.since:
        terms.append(Operation.created_at >= f.since)
    if f.until:
        terms.append(Operation.created_at <= f.until)
    return terms


def _inside_terms(f: HistoryFilter) -> list[Any]:
    """The filters read from each row (and its instance's row)."""
    terms: list[Any] = []
    if f.host:
        terms.append(
            sa.or_(Instance.host == f.host, *(Operation.parameters[k].as_string() == f.host for k in HOST_PARAMS))
        )
    if f.error:
        terms.append(Operation.error.icontains(f.error, autoescape=True))
    return terms


# Positions spelled out rather than as row comparisons: every database turns
# the first term into an index range, whatever it makes of row values.
def _past(p: Position, older: bool) -> list[Any]:
    """Strictly beyond `p` in the reading direction."""
    at, op_id = p
    if older:
        return [Operation.created_at <= at, sa.or_(Operation.created_at < at, Operation.id < op_id)]
    return [Operation.created_at >= at, sa.or_(Operation.created_at > at, Operation.id > op_id)]


def _up_to(p: Position, older: bool) -> list[Any]:
    """Up to `p` in the reading direction, `p` included."""
    at, op_id = p
    if older:
        return [Operation.created_at >= at, sa.or_(Operation.created_at > at, Operation.id >= op_id)]
    return [Operation.created_at <= at, sa.or_(Operation.created_at < at, Operation.id <= op_id)]
