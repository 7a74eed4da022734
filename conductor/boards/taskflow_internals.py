"""The one place that reaches into taskflow 6.5's jobboards past their public
API, each use named for what it gives us. tests/conductor/test_taskflow_internals.py
checks every one against the installed taskflow on real servers, so an upgrade
that moves them fails there, by name, not deep in a conductor.

Why each is needed:
- Redis: the client (a compare-and-extend script for claims, posting keyed by
  operation id, pub/sub wake-ups), the one-round-trip job listing, and the
  board's own serialisation of a posting (so taskflow still reads our jobs).
- etcd: the client and the jobs' key prefix and data suffix, for a watch that
  wakes conductors (taskflow's own watch only feeds its cache).
"""

from __future__ import annotations

from typing import Any

from taskflow.jobs.backends import impl_redis


def redis_client(board: impl_redis.RedisJobBoard) -> Any:
    return board._client


def redis_jobs(board: impl_redis.RedisJobBoard) -> list[Any]:
    """Every job of the board, read in one round trip."""
    jobs: list[Any] = board._fetch_jobs()
    return jobs


def redis_encode(board: impl_redis.RedisJobBoard, posting: dict[str, Any]) -> bytes:
    """A posting as the board itself stores it (and will read it back)."""
    encoded: bytes = board._dumps(posting)
    return encoded


def etcd_client(board: Any) -> Any:
    return board._client


def etcd_job_keys(board: Any) -> tuple[str, str]:
    """(prefix of every job's keys, suffix of a job's data key) on an etcd board."""
    return board._create_path(board._root_path, board.JOB_PREFIX), board.DATA_POSTFIX
