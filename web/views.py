"""The read side shared by the API and the pages: request values checked and
turned into queries, records turned into dicts (conductor/render.py's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from conductor import history, liveness, render
from persistence import flowlog, hosts, instances, operations
from persistence.flowlog import StepSummary
from persistence.history import NEWEST, OLDEST, Cursor, HistoryFilter, read_page
from persistence.models import FLOW_STEP, utcnow
from web import cursor, flowshape
from web.context import ApiError

STATES = operations.ACTIVE_STATES + operations.FINAL_STATES
FILTERS = ("kind", "state", "instance", "host", "since", "until", "error")
MAX_LIMIT = 500
#: The most operations one page of a host or error search reads (those
#: filters look inside rows): ~55 ms on MariaDB, ~20 ms on PostgreSQL for a
#: host no operation names (bench/README.md).
SCAN_ROWS = 10_000


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer (got {value!r})") from None
    if not low <= n <= high:
        raise ApiError(400, f"{name} must be between {low} and {high} (got {n})")
    return n


def history_query(params) -> tuple[HistoryFilter, int, Cursor]:
    """Filters, limit and page cursor from query parameters; a typo is a 400, not an empty list."""
    if "offset" in params:
        raise ApiError(
            400,
            "offset is not accepted: page with cursor= (a page's next, prev "
            "or last), which costs the same on every page",
        )
    unknown = set(params) - set(FILTERS) - {"limit", "cursor"}
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    get = lambda k: params.get(k) or None  # noqa: E731 - an empty form field is no filter
    kind, state = get("kind"), get("state")
    if state is not None and state.upper() not in STATES:
        raise ApiError(400, f"unknown state {state!r}: one of {', '.join(STATES)}")
    try:
        history.check_kind(kind)
        f = HistoryFilter(
            instance=get("instance"),
            kind=kind,
            state=state.upper() if state else None,
            host=get("host"),
            since=history.utc_time(get("since"), "since"),
            until=history.utc_time(get("until"), "until"),
            error=get("error"),
        )
    except history.BadQuery as e:
        raise ApiError(400, str(e)) from None
    token = get("cursor")
    return (f, _int(params.get("limit"), "limit", 50, 1, MAX_LIMIT), NEWEST if token is None else cursor.decode(token))


def history_page(s, f: HistoryFilter, limit: int, at: Cursor = NEWEST) -> dict:
    """One page of `ops list`, newest first, and the tokens of the pages
    around it: `next` (older; None on the last page), `prev` (newer; None on
    the first), `last` (the oldest operations). `more`: `next` is not None.

    The page is read from its cursor's position, one more row than shown to
    know whether another page follows that way; the other way has one if the
    cursor came from a row (that row is there). A host or error search reads
    at most SCAN_ROWS operations: when that finds fewer than `limit`, the
    page is `partial` and the token that way goes on from where it stopped.
    """
    try:
        history.check_names(s, f)
    except history.BadQuery as e:
        raise ApiError(400, str(e)) from None
    page = read_page(s, f, limit + 1, at, scan=SCAN_ROWS)
    beyond = len(page.rows) > limit
    rows = page.rows[:limit] if at.older else page.rows[-limit:]  # the extra row is the farthest
    first = last = at.position  # an empty page: both neighbours are at the cursor
    if rows:
        first = (rows[0][0].created_at, rows[0][0].id)
        last = (rows[-1][0].created_at, rows[-1][0].id)
    cut = page.scanned_to
    if at.older:
        older, newer = cut or (last if beyond else None), first if at.position else None
    else:
        older, newer = last if at.position else None, cut or (first if beyond else None)
    now = utcnow()
    return {
        "operations": [
            render.history_dict(o, name, now) | {"parameters": render.shown_parameters(o)} for o, name in rows
        ],
        "limit": limit,
        "next": cursor.encode(Cursor(True, *older)) if older else None,
        "prev": cursor.encode(Cursor(False, *newer)) if newer else None,
        "last": cursor.encode(OLDEST),
        "more": older is not None,
        "partial": cut is not None and len(rows) < limit,
    }


def step_class(st: StepSummary) -> str:
    """How a step is coloured: failed (its execute failed), revert-failed,
    reverted, ok, running or pending."""
    if st.state == "REVERT_FAILURE":
        return "revert-failed"
    if st.error and st.state in ("FAILURE", "REVERTED"):
        return "failed"
    if st.state == "REVERTED":
        return "reverted"
    if st.state == "SUCCESS":
        return "ok"
    if st.state in ("RUNNING", "REVERTING", "RETRYING"):
        return "running"
    return "pending"


def operation_detail(
    s, op_id: str, step_timeout: float, planner: Callable[[object], flowshape.Plan | None] | None = None
) -> dict:
    """`ops show --json --transitions`, plus each step's colour class and,
    given a planner (WebState.plan), the flow's planned graph (`plan`)."""
    op = operations.get(s, op_id)
    if op is None:
        raise ApiError(404, operations.not_found(s, op_id))
    rows = flowlog.entries(s, op.id)  # as `ops show`: the flow log is keyed by operation
    steps = flowlog.summarize(rows)
    payload = render.operation_show_dict(op, rows, steps, liveness.facts(op, steps, step_timeout))
    name = None
    if op.instance_uuid:
        inst = instances.get(s, op.instance_uuid)
        name = inst.name if inst is not None else (op.parameters or {}).get("name")
    detail = payload | {
        "parameters": render.shown_parameters(op),  # secrets as `(secret)`
        "instance_name": name,
        "steps": [d | {"class": step_class(st)} for d, st in zip(payload["steps"], steps, strict=False)],
    }
    if planner is not None:
        shape = planner(op)
        detail["plan_complete"] = shape is not None
        if shape is None:  # the flow log's steps in a line: better than no graph
            shape = flowshape.fallback([d["step"] for d in detail["steps"] if d["step"] != FLOW_STEP])
        detail["plan"] = dataclasses.asdict(shape)
        detail["_plan"] = shape  # for the page; dropped from the API's JSON
    return detail


def instances_list(s, include_deleted: bool) -> list[dict]:
    down = hosts.down_names(s)
    return [
        render.instance_dict(i) | {"host_down": i.host in down}
        for i in instances.list_live(s, include_deleted=include_deleted)
    ]


def hosts_list(s) -> list[dict]:
    return [render.host_dict(h) for h in hosts.list_hosts(s)]
