"""The JSON REST API, /api/v1. Reads need the reader role, actions operator.

Every error is one JSON object `{"error": "..."}` with its status (400 bad
input, 401 no or unknown token, 403 role too low, 404 unknown id, 409 the
instance or operation is not in a state that allows it), and a refused
request writes nothing. Secret parameters travel only in a POST body and are
never logged or echoed.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.routing import Route

from conductor.api import SpawnRequest
from conductor.logs import remember_secret
from flows import catalog
from flows.errors import (
    InstanceLocked,
    InvalidRequest,
    InvalidState,
    NotFound,
    OperationError,
)
from web import actions, auth, live, views
from web.context import ApiError, json_response, require, state
from web.openapi import OPENAPI

LOG = logging.getLogger(__name__)


def health(request: Request):
    return json_response({"status": "ok"})


def openapi(request: Request):
    return json_response(OPENAPI)


def list_operations(request: Request):
    require(request, auth.READER)
    f, limit, at = views.history_query(request.query_params)
    with state(request).db.session() as s:
        return json_response(views.history_page(s, f, limit, at))


def show_operation(request: Request):
    require(request, auth.READER)
    ws = state(request)
    ws.conductor()  # before the session: on SQLite its start may write (the plan needs it)
    with ws.db.session() as s:
        op = views.operation_detail(s, request.path_params["op_id"], ws.conf.conductor.step_timeout, ws.plan)
    op.pop("_plan")
    return json_response(op)


def list_instances(request: Request):
    require(request, auth.READER)
    deleted = request.query_params.get("deleted", "false").lower()
    if deleted not in ("true", "false"):
        raise ApiError(400, f"deleted must be true or false (got {deleted!r})")
    with state(request).db.session() as s:
        return json_response({"instances": views.instances_list(s, deleted == "true")})


def list_hosts(request: Request):
    require(request, auth.READER)
    with state(request).db.session() as s:
        return json_response({"hosts": views.hosts_list(s)})


async def operation_action(request: Request):
    """POST /api/v1/operations/{id}/{action}: web/actions.py's table; the
    body, if any, is a JSON object (mark-reverted's `note`)."""
    action = actions.get(request.path_params["action"])
    role = require(request, action.role)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(action.run, state(request), request.path_params["op_id"], role, body)
    return json_response(result, action.status)


def _submit(request: Request, body: dict) -> str:
    """Validate and record the operation (nothing written on a refusal), then
    run it here unless a jobboard's conductors run it."""
    ws = state(request)
    kind_name, instance, params = body.get("kind"), body.get("instance"), body.get("parameters", {})
    if not isinstance(kind_name, str) or not isinstance(instance, str) or not isinstance(params, dict):
        raise ApiError(400, 'body must be {"kind": str, "instance": str, "parameters": {...}}')
    unknown = set(body) - {"kind", "instance", "parameters"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    try:
        kind = catalog.get(kind_name)
    except KeyError as e:
        raise ApiError(400, str(e.args[0])) from None
    for p in kind.params if kind_name != "spawn" else ():
        if p.secret and isinstance(params.get(p.name), str):
            remember_secret(params[p.name])
    c = ws.conductor()
    try:
        if kind_name == "spawn":
            allowed = {"flavor", "image", "host", "networks", "admin_password"}
            if set(params) - allowed:
                raise ApiError(400, f"spawn takes no parameter {', '.join(sorted(set(params) - allowed))}")
            if not all(isinstance(params.get(k), str) for k in ("flavor", "image")):
                raise ApiError(400, "spawn needs flavor and image (strings)")
            password = params.get("admin_password")
            if password is not None:
                if not isinstance(password, str):
                    raise ApiError(400, "spawn: admin_password must be str")
                remember_secret(password)
            networks = params.get("networks") or ["default"]
            if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
                raise ApiError(400, "spawn: networks must be a list of strings")
            handle = c.submit_spawn(
                SpawnRequest(
                    name=instance,
                    flavor=params["flavor"],
                    image=params["image"],
                    host=params.get("host"),
                    networks=tuple(networks),
                    admin_password=password,
                )
            )
        else:
            handle = c.submit(kind_name, instance, **params)
    except (InstanceLocked, InvalidState) as e:
        raise ApiError(409, str(e)) from None
    except NotFound as e:
        raise ApiError(404 if "instance" in str(e) and kind_name != "spawn" else 400, str(e)) from None
    except (InvalidRequest, OperationError) as e:
        raise ApiError(400, str(e)) from None
    op_id = handle.id
    if not ws.conf.conductor.jobboard:
        ws.runs.submit(actions.run_logged, c, op_id)
    return op_id


async def submit_operation(request: Request):
    require(request, auth.OPERATOR)
    if request.query_params:  # a secret in a URL ends up in logs and histories
        raise ApiError(400, "no query parameters here: the operation and its parameters go in the JSON body")
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be {"kind": str, "instance": str, "parameters": {...}}')
    from starlette.concurrency import run_in_threadpool

    op_id = await run_in_threadpool(_submit, request, body)
    return json_response({"id": op_id, "href": f"/api/v1/operations/{op_id}"}, 202)


routes = [
    Route("/api/v1/health", health),
    Route("/api/v1/openapi.json", openapi),
    Route("/api/v1/operations", list_operations, methods=["GET"]),
    Route("/api/v1/operations", submit_operation, methods=["POST"]),
    Route("/api/v1/operations/{op_id}", show_operation),
    Route("/api/v1/operations/{op_id}/events", live.operation_events),
    Route("/api/v1/operations/{op_id}/{action}", operation_action, methods=["POST"]),
    Route("/api/v1/instances", list_instances),
    Route("/api/v1/hosts", list_hosts),
]
