"""The Starlette application: API routes, pages, static files, and the
JSON error every refused API request gets."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from oslo_config import cfg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from conductor.logs import redact
from web import api, pages, pages_fleet
from web.context import ApiError, WebState, json_response

LOG = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


async def _api_error(request: Request, err: ApiError):
    """JSON for the API; for a page, the login form (401) or a short HTML page."""
    if request.url.path.startswith("/api/"):
        return json_response({"error": err.message}, err.status)
    if err.status == 401:
        return RedirectResponse("/login", 303)
    back = request.headers.get("referer", "/operations")
    body = pages.message_page(
        err.message, back if back.startswith(str(request.base_url)) or back.startswith("/") else "/operations"
    )
    return HTMLResponse(body, err.status)


async def _not_found(request: Request, exc):
    if request.url.path.startswith("/api/"):
        status = getattr(exc, "status_code", 404)
        return json_response({"error": getattr(exc, "detail", "not found")}, status)
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(str(getattr(exc, "detail", "not found")), getattr(exc, "status_code", 404))


async def _internal(request: Request, exc: Exception):
    """A bug or a lost database: logged here, one line for the client."""
    LOG.error("%s %s failed: %s", request.method, request.url.path, redact(str(exc)))
    if request.url.path.startswith("/api/"):
        return json_response({"error": f"internal error: {type(exc).__name__}"}, 500)
    return HTMLResponse(pages.message_page(f"internal error: {type(exc).__name__}", "/operations"), 500)


class ServerTiming:
    """Adds `Server-Timing: app;dur=MS` to every response: the time from the
    request's arrival to its headers (for a page, the whole render). Pure
    ASGI, so a live-update stream passes through unbuffered."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed_send)


def build_app(conf: cfg.ConfigOpts) -> Starlette:
    ws = WebState.open(conf)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        ws.close()

    app = Starlette(
        routes=api.routes + pages_fleet.routes + pages.routes + [Mount("/static", StaticFiles(directory=STATIC))],
        exception_handlers={ApiError: _api_error, 404: _not_found, 405: _not_found, Exception: _internal},
        middleware=[Middleware(ServerTiming)],
        lifespan=lifespan,
    )
    app.state.web = ws
    return app
