"""Every taskflow internal computeflow relies on (conductor/boards/taskflow_internals.py)
still exists and still means what we use it for, on real Redis and etcd boards.
A taskflow upgrade that renames or changes one fails here, by name."""

from __future__ import annotations

import datetime as dt

from taskflow.jobs import base as jobs_base

from conductor.boards import JOB_NAME, taskflow_internals as internals
from conductor.boards.base import job_details
from tests.conductor.conftest import _board


def test_redis_internals_give_client_listing_and_encoding(redis_url):
    board = _board(redis_url, "c1").board
    client = internals.redis_client(board)
    assert client.ping() is True
    assert internals.redis_jobs(board) == []
    posting = jobs_base.format_posting(
        "op-1", JOB_NAME, created_on=dt.datetime(2026, 1, 1), details=job_details("op-1", dt.datetime(2026, 1, 1))
    )
    posting["sequence"] = 1
    encoded = internals.redis_encode(board, posting)
    assert isinstance(encoded, bytes)
    client.hset(board.listings_key, b"op-1", encoded)  # stored as we store a job
    jobs = internals.redis_jobs(board)  # and read back by taskflow itself
    assert [(j.uuid, j.details["operation_id"]) for j in jobs] == [("op-1", "op-1")]


def test_etcd_internals_give_client_and_the_job_keys(etcd_url):
    b = _board(etcd_url, "c1")
    client = internals.etcd_client(b.board)
    prefix, data_suffix = internals.etcd_job_keys(b.board)
    b.post("op-1", dt.datetime(2026, 1, 1))
    keys = [
        meta["key"].decode() if isinstance(meta["key"], bytes) else meta["key"] for _, meta in client.get_prefix(prefix)
    ]
    assert any(k.startswith(prefix) and k.endswith(data_suffix) for k in keys), keys
