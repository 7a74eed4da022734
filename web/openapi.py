"""The API's OpenAPI 3 description, written by hand (served at /api/v1/openapi.json)."""

_ERROR = {
    "description": "one error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR}
_ID = {
    "name": "op_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "operation id or a unique prefix (4+ chars)",
}


def _q(name: str, help: str, type_: str = "string") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}, "description": help}


def _ok(help: str, status: str = "200") -> dict:
    return {status: {"description": help, "content": {"application/json": {}}}}


def _action(help: str, status: str = "202") -> dict:
    return {
        "post": {
            "summary": help,
            "parameters": [_ID],
            "responses": _ok("the outcome", status) | _ERRORS | {"404": _ERROR, "409": _ERROR},
        }
    }


OPENAPI = {
    "openapi": "3.0.3",
    "info": {
        "title": "computeflow",
        "version": "1",
        "description": "Operations, instances and hosts of computeflow. Auth: "
        "`Authorization: Bearer TOKEN`; roles reader < operator < admin.",
    },
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/health": {"get": {"summary": "the server answers (no token needed)", "security": [], "responses": _ok("ok")}},
        "/operations": {
            "get": {
                "summary": "history, newest first (reader)",
                "parameters": [
                    _q("kind", "operation kind (catalogue name)"),
                    _q("state", "PENDING, RUNNING, REVERTING, SUCCEEDED, REVERTED or FAILED"),
                    _q("instance", "instance name (deleted ones too) or uuid"),
                    _q("host", "instance's host or a host the operation named"),
                    _q("since", "created at or after (ISO-8601; UTC unless an offset)"),
                    _q("until", "created at or before (ISO-8601)"),
                    _q("error", "substring of the error, any case"),
                    _q("limit", "1-500, default 50", "integer"),
                    _q(
                        "cursor",
                        "the page to read: a page's next (older), prev (newer) or "
                        "last (the oldest operations) token as given; none: the newest",
                    ),
                ],
                "responses": _ok(
                    "{operations: [...], limit, next, prev, last, more, partial: "
                    "a host or error search stopped after reading its share}"
                )
                | _ERRORS,
            },
            "post": {
                "summary": "submit a catalogue operation (operator)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["kind", "instance"],
                                "properties": {
                                    "kind": {"type": "string"},
                                    "instance": {"type": "string", "description": "name (a new one for spawn)"},
                                    "parameters": {
                                        "type": "object",
                                        "description": "the kind's parameters; secrets (admin_password, "
                                        "...) only here, never in a URL",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": _ok("{id, href}", "202") | _ERRORS | {"404": _ERROR, "409": _ERROR},
            },
        },
        "/operations/{op_id}": {
            "get": {
                "summary": "one operation: steps (execute/revert spans, tries), transitions, liveness (reader)",
                "parameters": [_ID],
                "responses": _ok("the operation") | _ERRORS | {"404": _ERROR},
            }
        },
        "/operations/{op_id}/events": {
            "get": {
                "summary": "live updates (reader): server-sent events `update` {id, state, last_row, "
                "committed_at, html} on every change, `end` once it ended",
                "parameters": [_ID],
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}}
                | _ERRORS
                | {"404": _ERROR},
            }
        },
        "/operations/{op_id}/cancel": _action("stop at the next step and revert (operator)"),
        "/operations/{op_id}/resume-plan": _action(
            "what a resume would do, probing the hosts; changes nothing (operator)", "200"
        ),
        "/operations/{op_id}/retry-revert": _action("run the failed reverts of a FAILED operation again (admin)"),
        "/operations/{op_id}/mark-reverted": _action(
            'record a manual cleanup of a FAILED operation; body {"note": str} optional (admin)', "200"
        ),
        "/instances/{name}": {
            "get": {
                "summary": "one instance (live by name, any by uuid, else the last deleted of that "
                "name), its operations, claims and hypervisor events (reader)",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _ok("{instance, operations, more, claims, events}") | _ERRORS | {"404": _ERROR},
            }
        },
        "/inventory": {
            "get": {
                "summary": "per host: the database's instances and claims next to what the driver "
                "holds (`computeflow inventory`), and where they disagree (reader)",
                "responses": _ok("{hosts: [...]}") | _ERRORS,
            }
        },
        "/reconcile": {
            "post": {
                "summary": "`computeflow reconcile`: the audit (operator); with apply, also start the fixes (admin)",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"apply": {"type": "boolean"}, "host": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": _ok("the audit {hosts, findings, text, ...}")
                | _ok("the audit and {applying: n}", "202")
                | _ERRORS,
            }
        },
        "/instances": {
            "get": {
                "summary": "live instances (reader)",
                "parameters": [_q("deleted", "true: deleted ones too", "boolean")],
                "responses": _ok("{instances: [...]}") | _ERRORS,
            }
        },
        "/hosts": {
            "get": {"summary": "hosts and their capacity (reader)", "responses": _ok("{hosts: [...]}") | _ERRORS}
        },
    },
}
