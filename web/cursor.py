"""The operations list's page tokens (`cursor=`): an opaque, URL-safe
encoding of persistence.history.Cursor, i.e. which way to read and from
which operation's (created_at, id).

A token is not secret and not signed: an edited one can only point at
another place in the history the caller may read anyway. One that does not
decode is a 400.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json

from persistence.history import Cursor
from web.context import ApiError

_OLDER, _NEWER = "o", "n"


def encode(cursor: Cursor) -> str:
    """The token of `cursor` (the newest page needs none: no `cursor=` at all)."""
    fields: list[str] = [_OLDER if cursor.older else _NEWER]
    if cursor.position is not None:
        at, op_id = cursor.position
        fields += [at.isoformat(timespec="microseconds"), op_id]
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> Cursor:
    """The Cursor a token stands for; ApiError 400 for anything this server
    did not make (truncated, edited into nonsense, from another API)."""
    try:
        fields = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(fields, list):
            raise ValueError(fields)
        if fields == [_NEWER]:
            return Cursor(older=False)
        way, at, op_id = fields
        if way not in (_OLDER, _NEWER) or not isinstance(op_id, str) or not 0 < len(op_id) <= 36:
            raise ValueError(way)
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is not None:
            raise ValueError(at)
    except (ValueError, TypeError, binascii.Error):
        shown = token if len(token) <= 40 else token[:40] + "..."
        raise ApiError(
            400, f"bad cursor {shown!r}: pass a page's next, prev or last exactly as the API gave it"
        ) from None
    return Cursor(older=way == _OLDER, created_at=when, id=op_id)
