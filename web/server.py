"""`computeflow serve`: the API and the dashboard in one uvicorn process."""

from __future__ import annotations

import sys

from oslo_config import cfg

from web import auth


def hash_token_from_stdin() -> int:
    token = sys.stdin.read().strip()
    if not token:
        print("computeflow: error: no token on stdin", file=sys.stderr)
        return 2
    print(auth.hash_token(token))
    return 0


def serve(conf: cfg.ConfigOpts, host: str, port: int) -> int:
    import uvicorn

    from web.app import build_app

    app = build_app(conf)  # a bad [web] tokens entry or database fails here, before binding
    print(f"computeflow: serving the API and dashboard on http://{host}:{port}/", flush=True)
    # No access log: the default format has no secret, but it is noise for an operator.
    # An open live-update stream must not hold a stop for long (web/live.py).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    return 0
