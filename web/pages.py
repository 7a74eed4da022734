"""The dashboard's HTML pages, rendered on the server from views.py's dicts.

Plain HTML, one stylesheet and one small script from web/static/ (nothing is
fetched from the internet). A page without a valid cookie sends the browser
to the login form.
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from web import actions, auth, flowshape, views
from web.context import ApiError, caller_role, require, state
from web.graph import graph_svg

e = html.escape
ACTIVE = {"PENDING", "RUNNING", "REVERTING"}


def when(value: str | None) -> str:
    """A stored time as shown on every page: UTC, marked Z (`2026-12-04 10:00:50.179Z`)."""
    if not value:
        return "-"
    text = str(value).replace("T", " ")
    return text if text.endswith("Z") else text.removesuffix("+00:00") + "Z"


def _page(title: str, body: str, role: str | None = None, csrf: str = "") -> HTMLResponse:
    who = (
        f'<form method="post" action="/logout" class="who">{role} '
        f'<input type="hidden" name="csrf" value="{e(csrf)}"><button>log out</button></form>'
        if role
        else ""
    )
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - '
        f'computeflow</title><link rel="stylesheet" href="/static/style.css"></head><body>'
        f'<header><nav><a href="/operations">computeflow</a> <a href="/operations">operations'
        f'</a> <a href="/hosts">hosts</a></nav> {who}</header><main>{body}</main>'
        f'<script src="/static/app.js"></script></body></html>'
    )


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the pages post nothing else; no multipart)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise ApiError(400, "expected a form (application/x-www-form-urlencoded)")
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def message_page(message: str, back: str) -> bytes:
    """A refused page action (403, 409, ...): the reason and the way back."""
    return _page("refused", f'<p class="error" id="message">{e(message)}</p><p><a href="{e(back)}">back</a></p>').body


def _viewer(request: Request) -> str | None:
    role, _ = caller_role(request)
    return role


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse("/login?" + urlencode({"next": request.url.path}), 303)


# -- login -------------------------------------------------------------------
def login_form(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    """The form carries a CSRF token matching a cookie it sets (double submit,
    as every other post): another site cannot log a browser in with a token
    of its choosing (login CSRF), its post has neither."""
    nxt = request.query_params.get("next", "/operations")
    csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf()
    msg = f'<p class="error">{e(error)}</p>' if error else ""
    resp = _page(
        "log in",
        f'<h1>Log in</h1>{msg}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{e(nxt)}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label>Token <input type="password" name="token" id="token" autofocus '
        'autocomplete="current-password"></label> <button id="login">Log in</button>'
        "</form>",
    )
    resp.status_code = status
    resp.set_cookie(auth.CSRF_COOKIE, csrf, httponly=False, samesite="strict", path="/")
    return resp


async def login(request: Request) -> Response:
    if request.method == "GET":
        return login_form(request)
    form = await _form(request)
    if not auth.csrf_ok(request.cookies.get(auth.CSRF_COOKIE), form.get(auth.CSRF_FIELD)):
        return login_form(request, "the form expired or came from elsewhere: log in again", 403)
    token = str(form.get("token", ""))
    if state(request).tokens.role_of(token) is None:
        return login_form(request, "unknown token", 401)
    nxt = str(form.get("next", "/operations"))
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/operations"  # never an open redirect
    resp = RedirectResponse(nxt, 303)
    resp.set_cookie(auth.TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict", path="/")
    # A new CSRF value for the session: the form's one was visible before the login.
    resp.set_cookie(auth.CSRF_COOKIE, auth.new_csrf(), httponly=False, samesite="strict", path="/")
    return resp


async def logout(request: Request) -> Response:
    form = await _form(request)
    if not auth.csrf_ok(request.cookies.get(auth.CSRF_COOKIE), form.get(auth.CSRF_FIELD)):
        raise ApiError(403, "missing or wrong CSRF token")
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(auth.TOKEN_COOKIE, path="/")
    resp.delete_cookie(auth.CSRF_COOKIE, path="/")
    return resp


# -- the operations list ---------------------------------------------------------
def _instance_link(o: dict) -> str:
    name = o.get("instance_name") or ""
    if not o.get("instance_uuid"):
        return e(name)
    return f'<a href="/instances/{e(o["instance_uuid"])}">{e(name or o["instance_uuid"][:8])}</a>'


def op_rows(ops: list[dict]) -> str:
    """Operations as a table (the list page, an instance's history)."""
    rows = "".join(
        f'<tr class="op-{o["state"].lower()}"><td><a href="/operations/{o["id"]}">{o["id"][:8]}'
        f"</a></td><td>{e(o['kind'])}</td><td>{_instance_link(o)}</td>"
        f'<td class="state">{o["state"]}</td><td>{e(when(o["created_at"]))}</td>'
        f"<td>{'' if o['duration_s'] is None else o['duration_s']}</td>"
        f"<td>{e((o['error'] or '')[:80])}</td></tr>"
        for o in ops
    )
    return (
        '<table id="operations"><thead><tr><th>id</th><th>kind</th><th>instance</th>'
        "<th>state</th><th>created (UTC)</th><th>seconds</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _filters_form(params) -> str:
    fields = "".join(f'<label>{k} <input name="{k}" value="{e(params.get(k, ""))}"></label> ' for k in views.FILTERS)
    return (
        f'<form method="get" action="/operations" class="filters">{fields}'
        f'<label>limit <input name="limit" size="4" value="{e(params.get("limit", "50"))}">'
        "</label> <button>filter</button></form>"
    )


def _pager(params, page: dict) -> str:
    """Newest / newer / older / oldest links, each keeping the filters and the limit."""
    keep = {k: v for k, v in params.items() if k != "cursor" and v}

    def href(token: str | None) -> str:
        return "/operations?" + urlencode(keep | ({"cursor": token} if token else {}))

    links = []
    if page["prev"]:
        links += [
            f'<a id="newest" href="{e(href(None))}" rel="first">newest</a>',
            f'<a id="newer" href="{e(href(page["prev"]))}" rel="prev">newer</a>',
        ]
    if page["next"]:
        links += [
            f'<a id="older" href="{e(href(page["next"]))}" rel="next">older</a>',
            f'<a id="oldest" href="{e(href(page["last"]))}" rel="last">oldest</a>',
        ]
    return f'<nav class="pager">{" ".join(links)}</nav>'


def operations_page(request: Request) -> Response:
    role = _viewer(request)
    if role is None:
        return _to_login(request)
    params = request.query_params
    try:
        f, limit, at = views.history_query(params)
        with state(request).db.session() as s:
            page = views.history_page(s, f, limit, at)
    except ApiError as err:
        return _page(
            "operations",
            f'<h1>Operations</h1>{_filters_form(params)}<p class="error">{e(err.message)}</p>',
            role,
            request.cookies.get(auth.CSRF_COOKIE, ""),
        )
    return _page("operations", operations_body(params, page), role, request.cookies.get(auth.CSRF_COOKIE, ""))


def operations_body(params, page: dict) -> str:
    """The list page's body: the filters, one page (views.history_page), the links."""
    partial = (
        f'<p id="partial" class="muted">This page stopped after reading '
        f"{views.SCAN_ROWS:,} operations for these filters, fewer matching than the "
        "limit: page on to search further.</p>"
        if page["partial"]
        else ""
    )
    return f"<h1>Operations</h1>{_filters_form(params)}{op_rows(page['operations'])}{partial}{_pager(params, page)}"


# -- one operation -----------------------------------------------------------------
def _t(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def timeline_svg(op: dict) -> str:
    """One row per step: its execute span (filled) and revert span (hatched),
    placed on the operation's time axis. Spans are drawn from the step's start
    and its phase times; retries' waits are not work and are not drawn."""
    steps = op["steps"]
    starts = [_t(st["started_at"]) for st in steps if st["started_at"]]
    if not starts:
        return '<p class="muted">no step has run yet</p>'
    t0 = min(starts)
    ends = [_t(st["ended_at"]) for st in steps if st["ended_at"]] + starts
    total = max(0.001, (max(ends) - t0).total_seconds())
    width, label, row = 900, 240, 18
    scale = (width - label - 10) / total
    bars = []
    for n, st in enumerate(steps):
        y = n * row
        bars.append(f'<text x="0" y="{y + 13}">{e(st["step"])}</text>')
        if not st["started_at"]:
            continue
        x = label + (_t(st["started_at"]) - t0).total_seconds() * scale
        ex = (st["execute_s"] or 0) * scale
        bars.append(
            f'<rect class="exec {st["class"]}" x="{x:.1f}" y="{y + 3}" '
            f'width="{max(ex, 2):.1f}" height="{row - 6}"><title>{e(st["step"])} '
            f"execute {st['execute_s'] or 0:.3f}s, {st['attempts']} tries</title></rect>"
        )
        if st["revert_s"] is not None and st["ended_at"]:
            rx = (_t(st["ended_at"]) - t0).total_seconds() * scale + label - st["revert_s"] * scale
            bars.append(
                f'<rect class="revert" x="{rx:.1f}" y="{y + 3}" '
                f'width="{max(st["revert_s"] * scale, 2):.1f}" height="{row - 6}">'
                f"<title>{e(st['step'])} revert {st['revert_s']:.3f}s, "
                f"{st['revert_attempts']} tries</title></rect>"
            )
    height = len(steps) * row + 20
    axis = f'<text x="{label}" y="{height - 4}">0s</text><text x="{width - 60}" y="{height - 4}">{total:.3f}s</text>'
    return (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{"".join(bars)}{axis}</svg>'
    )


def _span(seconds: float | None, tries: int) -> str:
    if seconds is None and not tries:
        return ""
    text = "-" if seconds is None else f"{seconds * 1000:.1f} ms"
    return text + (f" ({tries} tries)" if tries > 1 else "")


def actions_bar(op: dict, role: str, csrf: str) -> str:
    """The buttons this role may use on this operation now. Each is a form
    (works without script); app.js asks for confirmation and posts it to the
    API instead, so the page stays and the live update shows the outcome."""
    forms = []
    for a in actions.available(op, role):
        forms.append(
            f'<form method="post" class="action" action="/operations/{op["id"]}/{a.name}" '
            f'data-api="/api/v1/operations/{op["id"]}/{a.name}" data-confirm="{e(a.confirm)}">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<button id="{a.name}" title="{e(a.help)}">{e(a.label)}</button></form>'
        )
    return f'<div class="actions">{"".join(forms)}</div>'


def operation_live(op: dict, role: str, csrf: str = "") -> str:
    """The part of the page that live updates replace."""
    steps = "".join(
        f'<tr class="step {st["class"]}" id="step-{e(st["step"])}" data-step="{e(st["step"])}">'
        f"<td>{e(st['step'])}</td>"
        f'<td class="state">{st["state"]}</td><td>{e(when(st["started_at"]))}</td>'
        f"<td>{_span(st['execute_s'], st['attempts'])}</td>"
        f"<td>{_span(st['revert_s'], st['revert_attempts'])}</td>"
        f"<td>{e(st['error'] or '')}</td></tr>"
        for st in op["steps"]
    )
    live = op["live"]
    facts = "".join(f"<li>{e(n)}</li>" for n in live["notes"])
    graph = graph_svg(op["_plan"], op["steps"])
    counts = Counter(st["class"] for st in op["steps"])
    planned = len(flowshape.steps_in(op["_plan"].root))
    summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
    note = "" if op["plan_complete"] else " (planned shape unavailable: the steps seen so far)"
    return (
        f'{actions_bar(op, role, csrf)}<p>state <b id="op-state" class="op-{op["state"].lower()}">{op["state"]}</b>'
        f"{' (' + e(live['situation']) + ')' if live['situation'] else ''}"
        f" &middot; started {e(when(op['started_at']))} &middot; finished "
        f"{e(when(op['finished_at']))} &middot; owner {e(op['owner'] or '-')} "
        f"({e(live['owner_status'] or '-')}), lease until {e(when(op['lease_expires_at']))}"
        f"{' &middot; cancel requested by ' + e(op['cancel_requested_by']) if op['cancel_requested_by'] else ''}"
        "</p>"
        f"{'<ul>' + facts + '</ul>' if facts else ''}"
        f"{'<p class=error>' + e(op['error']) + '</p>' if op['error'] else ''}"
        f'<h2>Flow</h2><p class="muted" id="graph-summary">{planned} planned steps; '
        f'{e(summary) or "none run yet"}{note}</p><div class="graph-box">{graph}</div>'
        '<p class="legend"><span class="key ok"></span>succeeded <span class="key failed">'
        '</span>failed <span class="key reverted"></span>reverted <span class="key running">'
        '</span>running <span class="key pending"></span>not run <span class="key parallel">'
        '</span>parallel branches <span class="key retry"></span>retried block '
        '<span class="key no-return"></span>point of no return</p>'
        '<h2>Steps</h2><table id="steps"><thead><tr><th>step</th><th>state</th>'
        "<th>started (UTC)</th><th>execute</th><th>revert</th><th>error</th></tr></thead>"
        f"<tbody>{steps}</tbody></table><h2>Timeline</h2>{timeline_svg(op)}"
        '<p class="legend"><span class="key ok"></span>succeeded <span class="key failed">'
        '</span>failed <span class="key reverted"></span>reverted <span class="key running">'
        '</span>running <span class="key revert"></span>revert span</p>'
        f"{transitions_table(op)}"
    )


def transitions_table(op: dict) -> str:
    """Every committed transition; a failure's traceback folded under it."""
    tracebacks = {st["step"]: st.get("traceback") for st in op["steps"]}
    rows = []
    for t in op["transitions"] or []:
        err = e(t["error"] or "")
        tb = tracebacks.get(t["step"]) if t["error"] else None
        if tb:
            err = f'<details><summary>{err}</summary><pre class="tb">{e(tb)}</pre></details>'
        rows.append(
            f'<tr class="t-{e(t["state"].lower())}"><td>{e(when(t["at"]))}</td>'
            f"<td>{e(t['step'])}</td><td>{e(t['state'])}</td><td>{t['attempt']}</td>"
            f"<td>{err}</td></tr>"
        )
    return (
        f'<details id="transitions-box"><summary>Transitions ({len(rows)})</summary>'
        '<table id="transitions"><thead><tr><th>at (UTC)</th><th>step</th><th>state</th>'
        f"<th>try</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</details>"
    )


def operation_page(request: Request) -> Response:
    role = _viewer(request)
    if role is None:
        return _to_login(request)
    op_id = request.path_params["op_id"]
    try:
        ws = state(request)
        ws.conductor()  # before the session: on SQLite its start may write (the plan needs it)
        with ws.db.session() as s:
            op = views.operation_detail(s, op_id, ws.conf.conductor.step_timeout, ws.plan)
    except ApiError as err:
        return HTMLResponse(_page("operation", f'<p class="error">{e(err.message)}</p>', role).body, err.status)
    csrf = request.cookies.get(auth.CSRF_COOKIE, "")
    if request.query_params.get("fragment") == "live":
        return HTMLResponse(operation_live(op, role, csrf))
    params = " ".join(f"{e(k)}={e(str(v))}" for k, v in op["parameters"].items())
    body = (
        f"<h1>{e(op['kind'])} {_instance_link(op)}</h1>"
        f'<p class="muted">operation {op["id"]} &middot; hosts {e(", ".join(op["hosts"]))}'
        f" &middot; {params}</p>"
        '<pre id="action-result"></pre>'
        f'<div id="live" data-op="{op["id"]}" data-active="{str(op["state"] in ACTIVE).lower()}">'
        f"{operation_live(op, role, csrf)}</div>"
    )
    return _page(f"operation {op['id'][:8]}", body, role, csrf)


async def action_from_page(request: Request) -> Response:
    """An action's form posted without script: do it, then back to the operation."""
    form = await _form(request)
    action = actions.get(request.path_params["action"])
    role = require(request, action.role, form.get(auth.CSRF_FIELD))
    from starlette.concurrency import run_in_threadpool

    op_id = request.path_params["op_id"]
    result = await run_in_threadpool(action.run, state(request), op_id, role, {})
    if action.status == 200 and "text" in result:  # a read: show it
        return HTMLResponse(
            _page(
                action.label,
                f'<pre id="message">{e(result["text"])}</pre><p><a href="/operations/{e(op_id)}">back</a></p>',
                role,
            ).body
        )
    return RedirectResponse(f"/operations/{op_id}", 303)


def home(request: Request) -> Response:
    return RedirectResponse("/operations", 303)


routes = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/operations", operations_page),
    Route("/operations/{op_id}", operation_page),
    Route("/operations/{op_id}/{action}", action_from_page, methods=["POST"]),
]
