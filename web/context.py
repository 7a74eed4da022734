"""What every request handler shares: the configuration, the database, one
Conductor for actions, and who the caller is."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent import futures
from dataclasses import dataclass, field

from oslo_config import cfg
from starlette.requests import Request
from starlette.responses import JSONResponse

from persistence import schema
from persistence.session import Database
from web import auth, flowshape


class ApiError(Exception):
    """One clear JSON error: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_response(payload, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(payload, default=str)), status_code=status)


@dataclass
class WebState:
    conf: cfg.ConfigOpts
    tokens: auth.Tokens
    db: Database
    _conductor: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Runs submitted operations in the embedded mode (no jobboard), as the CLI does.
    runs: futures.ThreadPoolExecutor = field(
        default_factory=lambda: futures.ThreadPoolExecutor(4, thread_name_prefix="web-run")
    )

    #: Planned flow shapes by (operation id, flow version): a shape never
    #: changes once the operation is recorded, and building it costs a factory call.
    _plans: OrderedDict = field(default_factory=OrderedDict)

    @classmethod
    def open(cls, conf: cfg.ConfigOpts) -> WebState:
        tokens = auth.Tokens.parse(conf.web.tokens)
        db = Database(
            conf.database.connection, pool_size=conf.database.pool_size, connect_timeout=conf.database.connect_timeout
        )
        db.check_reachable()
        schema.ensure_current(db, auto_upgrade=conf.conductor.auto_upgrade and db.dialect == "sqlite")
        return cls(conf, tokens, db)

    def conductor(self):
        """The Conductor that cancels and submits; made on the first action."""
        from conductor.api import Conductor

        with self._lock:
            if self._conductor is None:
                self._conductor = Conductor(self.conf)
            return self._conductor

    def plan(self, op) -> flowshape.Plan | None:
        """The operation's planned flow graph; None if its factory cannot build it."""
        key = (op.id, op.flow_version)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        self.conductor()  # factories read configuration through the runtime it installs
        try:
            shape = flowshape.plan(op.kind, dict(op.parameters or {}))
        except flowshape.ShapeUnavailable:
            shape = None
        with self._lock:
            self._plans[key] = shape
            while len(self._plans) > 512:
                self._plans.popitem(last=False)
        return shape

    def close(self) -> None:
        self.runs.shutdown(wait=True)
        if self._conductor is not None:
            self._conductor.close()
        self.db.dispose()


def state(request: Request) -> WebState:
    return request.app.state.web


def caller_role(request: Request) -> tuple[str | None, bool]:
    """(role or None, whether the token came from the browser cookie)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return state(request).tokens.role_of(header[7:].strip()), False
    cookie = request.cookies.get(auth.TOKEN_COOKIE)
    return state(request).tokens.role_of(cookie), cookie is not None


def require(request: Request, needed: str, csrf_given: str | None = None) -> str:
    """The caller's role if it may do what needs `needed`; else ApiError 401/403.
    A state-changing request authenticated by the cookie needs the CSRF token."""
    role, by_cookie = caller_role(request)
    if role is None:
        raise ApiError(401, "a valid token is needed (Authorization: Bearer TOKEN)")
    if request.method == "POST" and by_cookie:
        given = csrf_given or request.headers.get(auth.CSRF_HEADER)
        if not auth.csrf_ok(request.cookies.get(auth.CSRF_COOKIE), given):
            raise ApiError(403, "missing or wrong CSRF token")
    if not auth.allows(role, needed):
        raise ApiError(403, f"role {role} may not do this; it needs {needed}")
    return role
