"""Live updates of one operation by server-sent events.

GET /api/v1/operations/{id}/events (reader) streams `update` events: JSON
with the operation's state, its newest flow-log row (`last_row`,
`committed_at`) and `html`, the page's live part rendered as on a page load.
The server looks at the database every POLL_S seconds with one cheap query
(persistence.flowlog.change_marker) and renders only when something changed,
so a commit shows in the browser at most POLL_S plus a render later. When
the operation has ended it sends `end` and closes; a stream also closes after
MAX_STREAM_S (the browser's EventSource reconnects by itself), so a server
stopping never waits for an idle page.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from persistence import flowlog, operations
from web import auth
from web.context import ApiError, require, state

POLL_S = 0.2
KEEPALIVE_S = 15.0
MAX_STREAM_S = 60.0


def _event(name: str, payload: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, default=str)}\n\n"


async def operation_events(request: Request) -> StreamingResponse:
    role = require(request, auth.READER)
    ws = state(request)
    csrf = request.cookies.get(auth.CSRF_COOKIE, "")

    def resolve() -> str:
        with ws.db.session() as s:
            op = operations.get(s, request.path_params["op_id"])
            if op is None:
                raise ApiError(404, operations.not_found(s, request.path_params["op_id"]))
            return op.id

    op_id = await run_in_threadpool(resolve)
    ws.conductor()  # the graph's planner needs the runtime (see pages.operation_page)

    def marker():
        with ws.db.session() as s:
            return flowlog.change_marker(s, op_id)

    def render() -> str:
        from web import pages, views  # pages imports this module's route table

        with ws.db.session() as s:
            op = views.operation_detail(s, op_id, ws.conf.conductor.step_timeout, ws.plan)
        return pages.operation_live(op, role, csrf)

    async def stream():
        started = last_sent = time.monotonic()
        seen = None
        while time.monotonic() - started < MAX_STREAM_S:
            m = await run_in_threadpool(marker)
            if m != seen:
                seen = m
                html = await run_in_threadpool(render)
                yield _event(
                    "update",
                    {"id": op_id, "state": m.state, "last_row": m.last_row, "committed_at": m.last_at, "html": html},
                )
                last_sent = time.monotonic()
                if m.state in operations.FINAL_STATES:
                    yield _event("end", {"id": op_id, "state": m.state})
                    return
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(POLL_S)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
