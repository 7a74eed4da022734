"""The read side of the operations history, shared by `computeflow ops list`
and the web API: query values checked (a typo is an error, not an empty
list). Each caller turns a `BadQuery` into its own error (exit 2, HTTP 400)."""

from __future__ import annotations

import datetime as dt

from computeflow.errors import ComputeflowError
from flows import catalog
from persistence import hosts, instances
from persistence.history import HistoryFilter


class BadQuery(ComputeflowError, ValueError):
    """A filter value that cannot be right; the message says why."""


def utc_time(value: str | None, name: str) -> dt.datetime | None:
    """An ISO-8601 time as naive UTC (how times are stored); no offset means UTC."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadQuery(f"{name} {value!r} is not an ISO-8601 time (e.g. 2026-12-04T05:43:03Z or 2026-12-04)") from None
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def check_kind(kind: str | None) -> None:
    if kind is not None:
        try:
            catalog.get(kind)
        except KeyError as e:
            raise BadQuery(str(e.args[0])) from None


def check_names(s, f: HistoryFilter) -> None:
    """The host and instance a filter names exist (an instance: ever, deleted too)."""
    if f.host is not None and hosts.get_host(s, f.host) is None:
        raise BadQuery(f"unknown host {f.host!r}")
    if f.instance is not None and not instances.ever_named(s, f.instance):
        raise BadQuery(f"unknown instance {f.instance!r} (never had that name or uuid)")
