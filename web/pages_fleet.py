"""Instances and hosts: the API routes and pages of web/fleet.py's read side,
and reconcile (`computeflow reconcile`: a dry run for an operator, --apply
for an admin)."""

from __future__ import annotations

import json
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from conductor import reconcile, render
from persistence import hosts
from web import auth, fleet
from web.context import ApiError, json_response, require, state
from web.pages import _form, _page, _to_login, _viewer, e, op_rows, when

LOG = logging.getLogger(__name__)


# -- API ------------------------------------------------------------------------
def api_instance(request: Request):
    require(request, auth.READER)
    with state(request).db.session() as s:
        return json_response(fleet.instance_detail(s, request.path_params["name"]))


def api_inventory(request: Request):
    require(request, auth.READER)
    return json_response(fleet.inventory(state(request)))


def _reconcile(ws, apply: bool, host: str | None) -> tuple[int, dict]:
    c = ws.conductor()
    if host is not None:
        with c.db.session() as s:
            if hosts.get_host(s, host) is None:
                raise ApiError(400, f"unknown host {host!r}")
    before = reconcile.audit(c, host)
    payload = before.to_dict() | {"text": render.reconcile_text(before, [], None)}
    if not apply:
        return 200, payload
    ws.runs.submit(_apply_logged, c, before)  # waits for its operations: not in the request
    return 202, payload | {"applying": len(before.actionable)}


def _apply_logged(c, before) -> None:
    try:
        for a in reconcile.apply(c, before):
            LOG.info("reconcile: operation %s %s", a.operation_id, a.state)
    except Exception:
        LOG.exception("reconcile --apply")


async def api_reconcile(request: Request):
    """POST /api/v1/reconcile, body {"apply": bool, "host": str} (both optional):
    the audit (operator); with apply, also start the fixes (admin)."""
    require(request, auth.OPERATOR)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    if (
        not isinstance(body, dict)
        or set(body) - {"apply", "host"}
        or not isinstance(body.get("apply", False), bool)
        or not isinstance(body.get("host", ""), str)
    ):
        raise ApiError(400, 'body must be {"apply": bool, "host": str} (both optional)')
    apply = body.get("apply", False)
    if apply:
        require(request, auth.ADMIN)
    status, payload = await run_in_threadpool(_reconcile, state(request), apply, body.get("host"))
    return json_response(payload, status)


# -- pages ----------------------------------------------------------------------
def instance_page(request: Request) -> Response:
    role = _viewer(request)
    if role is None:
        return _to_login(request)
    csrf = request.cookies.get(auth.CSRF_COOKIE, "")
    try:
        with state(request).db.session() as s:
            d = fleet.instance_detail(s, request.path_params["name"])
    except ApiError as err:
        return HTMLResponse(_page("instance", f'<p class="error">{e(err.message)}</p>', role, csrf).body, err.status)
    i = d["instance"]
    facts = [
        ("uuid", i["uuid"]),
        ("host", (i["host"] or "-") + (" (down)" if i["host_down"] else "")),
        ("flavor", i["flavor"]),
        ("image", i["image"]),
        ("vm state", i["vm_state"]),
        ("power", i["power_state"]),
        ("task", i["task_state"] or "-"),
        ("held by", i["held_by"] or "-"),
        ("created", when(i["created_at"])),
        ("updated", when(i["updated_at"])),
    ]
    held = f' <a href="/operations/{e(i["held_by"])}">(its operation)</a>' if i["held_by"] else ""
    rows = "".join(f"<tr><th>{k}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    claims = "".join(
        f"<li>{e(c['host'])}: {c['vcpus']} vCPU, {c['ram_mb']} MB, {c['disk_gb']} GB "
        f'(operation <a href="/operations/{e(c["operation_id"])}">'
        f"{e(c['operation_id'][:8])}</a>)</li>"
        for c in d["claims"]
    )
    evs = "".join(
        f"<tr><td>{e(when(ev['at']))}</td><td>{e(ev['host'])}</td><td>{e(ev['event'])}"
        f"</td><td>{e(ev['power_state'])}</td></tr>"
        for ev in d["events"]
    )
    body = (
        f"<h1>instance {e(i['name'])}{' (deleted)' if i['deleted'] else ''}</h1>"
        f'<table id="instance">{rows}</table>{held}'
        f"<h2>Claims</h2>{'<ul>' + claims + '</ul>' if claims else '<p class=muted>none</p>'}"
        f"<h2>History</h2>{op_rows(d['operations'])}"
        f"{'<p class=muted>only the newest shown</p>' if d['more'] else ''}"
        "<h2>Hypervisor events</h2>"
        + (
            f'<table id="events"><thead><tr><th>at (UTC)</th><th>host</th><th>event</th>'
            f"<th>power</th></tr></thead><tbody>{evs}</tbody></table>"
            if evs
            else '<p class="muted">none</p>'
        )
    )
    return _page(f"instance {i['name']}", body, role, csrf)


def _list(items, cls: str = "") -> str:
    return (
        f'<ul class="{cls}">' + "".join(f"<li>{e(str(x))}</li>" for x in items) + "</ul>"
        if items
        else '<p class="muted">none</p>'
    )


def hosts_page(request: Request) -> Response:
    role = _viewer(request)
    if role is None:
        return _to_login(request)
    csrf = request.cookies.get(auth.CSRF_COOKIE, "")
    inv = fleet.inventory(state(request))
    sections = []
    for entry in inv["hosts"]:
        h, db = entry["host"], entry["database"]
        cap = (
            f"{h['used_vcpus']}/{h['vcpus']} vCPU, {h['used_ram_mb']}/{h['ram_mb']} MB RAM, "
            f"{h['used_disk_gb']}/{h['disk_gb']} GB disk"
        )
        placed = [f"{i['name']} ({i['vm_state']})" for i in db["instances"]]
        db_side = (
            f"<h3>database</h3><p>{len(db['instances'])} instances</p>{_list(placed)}"
            f"<p>open claims: {len(db['claims'])}</p>"
        )
        if "driver_error" in entry:
            drv = f'<h3>driver</h3><p class="error">{e(entry["driver_error"])}</p>'
        else:
            d = entry["driver"]
            drv = (
                f"<h3>driver</h3><p>{len(d['guests'])} guests, {len(d['disks'])} disks, "
                f"{len(d['ports'])} ports, {len(d['volumes'])} volumes, "
                f"{len(d['base_images'])} cached base images</p>"
                f"<details><summary>guests</summary>{_list(d['guests'])}</details>"
                f"<details><summary>disks</summary>{_list(d['disks'])}</details>"
                f"<details><summary>ports</summary>{_list(d['ports'])}</details>"
            )
            diff = [f"on the host only: {g['name'] or g['uuid']}" for g in entry["only_driver"]] + [
                f"in the database only: {i['name']}" for i in entry["only_database"]
            ]
            drv += (
                f'<p class="error">disagree:</p>{_list(diff, "disagree")}'
                if diff
                else '<p class="agree">agrees with the database</p>'
            )
        sections.append(
            f'<section class="host" id="host-{e(h["name"])}"><h2>{e(h["name"])}'
            f'{" (down)" if h["down"] else ""}</h2><p class="muted">{e(h["driver"])} &middot; {cap}'
            f'</p><div class="sides"><div>{db_side}</div><div>{drv}</div></div></section>'
        )
    buttons = ""
    if auth.allows(role, auth.OPERATOR):
        buttons = (
            '<div class="actions">'
            f'<form method="post" class="action" action="/hosts/reconcile" '
            f'data-api="/api/v1/reconcile" data-confirm=""><input type="hidden" name="csrf" '
            f'value="{e(csrf)}"><button id="reconcile-dry-run">reconcile: dry run</button>'
            "</form>"
        )
        if auth.allows(role, auth.ADMIN):
            buttons += (
                '<form method="post" class="action" action="/hosts/reconcile" '
                'data-api="/api/v1/reconcile" data-body=\'{"apply": true}\' '
                'data-confirm="Fix every finding that has an action (computeflow '
                'reconcile --apply)?"><input type="hidden" name="apply" value="true">'
                f'<input type="hidden" name="csrf" value="{e(csrf)}">'
                '<button id="reconcile-apply">reconcile: apply</button></form>'
            )
        buttons += '</div><pre id="action-result"></pre>'
    return _page("hosts", f"<h1>Hosts</h1>{buttons}{''.join(sections)}", role, csrf)


async def reconcile_from_page(request: Request) -> Response:
    form = await _form(request)
    apply = form.get("apply") == "true"
    role = require(request, auth.ADMIN if apply else auth.OPERATOR, form.get(auth.CSRF_FIELD))
    _, payload = await run_in_threadpool(_reconcile, state(request), apply, None)
    return HTMLResponse(
        _page("reconcile", f'<pre id="message">{e(payload["text"])}</pre><p><a href="/hosts">back</a></p>', role).body
    )


routes = [
    Route("/api/v1/instances/{name}", api_instance),
    Route("/api/v1/inventory", api_inventory),
    Route("/api/v1/reconcile", api_reconcile, methods=["POST"]),
    Route("/instances/{name}", instance_page),
    Route("/hosts", hosts_page),
    Route("/hosts/reconcile", reconcile_from_page, methods=["POST"]),
]
