"""Boards: where submitted operations wait until a conductor claims them.

The operation row is the source of truth; a job only names the operation id
and its creation time (no parameters, no secrets). One module per board:

* `embedded` (no `[conductor] jobboard`): the operations table itself;
  claiming is taking ownership of a free operation, as `resume` does.
* `taskflow_board`: taskflow's jobboards (zookeeper://, etcd://, and the base
  of redis://), with what taskflow 6.5 leaves to the caller answered there:
  expiring claims kept alive by the service's heartbeat, oldest operation
  first, one claim at a time, nothing ever trashed.
* `redis_board`: keyed by operation id (posting is idempotent, a job lost
  with a Redis restart is posted again), listed in one round trip.

What taskflow keeps private and we still use is reached through
`taskflow_internals` alone, which a test checks against the installed
taskflow. `open_board` picks the board `[conductor] jobboard` names.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any
from urllib import parse

from oslo_config import cfg

from conductor.boards.base import JOB_NAME, Board, Claim, JobboardError
from conductor.boards.embedded import EmbeddedBoard
from persistence.session import Database

if TYPE_CHECKING:
    from conductor.boards.redis_board import RedisBoard
    from conductor.boards.taskflow_board import TaskflowBoard

__all__ = ["JOB_NAME", "Board", "Claim", "EmbeddedBoard", "JobboardError", "RedisBoard", "TaskflowBoard", "open_board"]

# The server boards load their client libraries (redis alone ~0.1 s): they are
# imported when a board of theirs is opened, not by every CLI command.
_LAZY = {"RedisBoard": "conductor.boards.redis_board", "TaskflowBoard": "conductor.boards.taskflow_board"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Seconds to reach a ZooKeeper server at start (taskflow's default), or less
# when claims expire sooner: a server slower than that to answer is no use.
_ZOOKEEPER_CONNECT_TIMEOUT = 10.0
_SCHEMES = {"redis": None, "zookeeper": "kazoo", "etcd": "etcd3gw"}


def open_board(conf: cfg.ConfigOpts, who: str, db: Database) -> Board:
    """The board `[conductor] jobboard` names; a clear JobboardError otherwise."""
    url = conf.conductor.jobboard
    if not url:
        return EmbeddedBoard(db)
    scheme = parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise JobboardError(
            f"[conductor] jobboard {url!r}: unknown scheme {scheme!r} (known: {', '.join(s + '://' for s in _SCHEMES)})"
        )
    module = _SCHEMES[scheme]
    if module and importlib.util.find_spec(module) is None:
        raise JobboardError(
            f"[conductor] jobboard {scheme}:// needs the Python package "
            f"{module!r}, which is not installed (pip install {module})"
        )
    from taskflow import exceptions as tf_exc
    from taskflow.jobs.backends import impl_redis
    from taskflow.utils import misc

    from conductor.boards.redis_board import RedisBoard
    from conductor.boards.taskflow_board import TaskflowBoard, close_quietly

    _, board_conf = misc.extract_driver_and_conf(url, "board")
    if scheme == "redis":
        board_conf.setdefault("socket_timeout", 5)
        board_conf.setdefault("socket_connect_timeout", 3)
        board = impl_redis.RedisJobBoard("computeflow", board_conf)
    else:
        from taskflow.jobs import backends

        board = backends.fetch("computeflow", _server_conf(scheme, url, board_conf, conf.conductor.claim_expiry))
    try:
        if scheme == "zookeeper":  # kazoo retries an unreachable server for the whole timeout
            board.connect(timeout=min(_ZOOKEEPER_CONNECT_TIMEOUT, float(conf.conductor.claim_expiry)))
        else:
            board.connect()
    except (tf_exc.JobFailure, tf_exc.TaskFlowException, OSError) as e:
        close_quietly(board)  # a ZooKeeper client would go on retrying in its threads
        raise JobboardError(f"[conductor] jobboard {url}: cannot connect: {e}") from None
    expiry = conf.conductor.claim_expiry
    return RedisBoard(board, who, expiry) if scheme == "redis" else TaskflowBoard(board, who, expiry)


def _server_conf(scheme: str, url: str, board_conf: dict[str, Any], claim_expiry: float) -> dict[str, Any]:
    """taskflow 6.5's ZooKeeper and etcd boards ignore the host in their URL
    (they read `hosts`, resp. `host` and `port`, and fall back to localhost):
    name the server explicitly. On ZooKeeper a claim is an ephemeral node that
    lives as long as the client's session, so the session timeout is the
    claim expiry there."""
    where = parse.urlsplit(url)
    conf = {k: v for k, v in board_conf.items() if k not in ("hostname", "port")}
    conf["board"] = scheme
    if scheme == "zookeeper":
        conf.setdefault("hosts", where.netloc or "localhost:2181")
        conf.setdefault("timeout", float(claim_expiry))
    else:
        conf.setdefault("host", where.hostname or "localhost")
        conf.setdefault("port", where.port or 2379)
    return conf
