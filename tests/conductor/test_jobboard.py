"""The jobboard layer against a real Redis, ZooKeeper and etcd (and PostgreSQL
for the service): oldest first, idempotent posts, expiring claims kept by a heartbeat, claims
re-taken after Redis lost them, unloadable jobs kept and reported, ended
operations consumed without running, the operation handle."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import sqlalchemy as sa

from conductor import boards, config
from conductor.api import Conductor, SpawnRequest
from conductor.handle import OperationHandle
from conductor.service import ConductorService
from persistence import operations
from persistence.models import FlowLogEntry, Operation, utcnow
from tests.conductor.conftest import _board
from tests.conftest import clean, run_cli, write_conf

T0 = dt.datetime(2026, 1, 1)


def eventually(check: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _raw(url: str) -> tuple[redis.Redis, str]:
    base, ns = url.split("?namespace=")
    return redis.Redis.from_url(base), ns


def test_jobs_are_claimed_oldest_operation_first(board_url):
    board = _board(board_url, "c1")
    ids = {age: str(uuid.uuid4()) for age in (5, 1, 3)}  # posted newest... oldest... middle
    for age, op_id in ids.items():
        board.post(op_id, T0 + dt.timedelta(minutes=age))
    order = [board.claim_next(set()).op_id for _ in range(3)]
    assert order == [ids[1], ids[3], ids[5]]
    assert board.claim_next(set()) is None  # all claimed: exactly one job per claim


def test_a_batch_claims_the_oldest_jobs_from_one_listing_skipping_and_within_its_limit(board_url):
    board, other = _board(board_url, "c1"), _board(board_url, "c2")
    ids = [str(uuid.uuid4()) for _ in range(6)]
    for age, op_id in reversed(list(enumerate(ids))):  # posted newest first
        board.post(op_id, T0 + dt.timedelta(minutes=age))
    first = board.claim_batch({ids[0]}, 3)
    assert [c.op_id for c in first] == ids[1:4]  # oldest first, the skipped one left
    assert [c.op_id for c in other.claim_batch(set(), 10)] == [ids[0], ids[4], ids[5]]
    assert board.claim_batch(set(), 10) == []  # every job claimed exactly once
    assert {op_id for op_id, claimed in board.waiting() if claimed} == set(ids)


def test_posting_is_idempotent_per_operation(board_url):
    board = _board(board_url, "c1")
    op_id = str(uuid.uuid4())
    for _ in range(3):
        board.post(op_id, T0)
    assert [i for i, _ in board.waiting()] == [op_id]


@pytest.mark.parametrize("kind, expiry", [("redis", 0.5), ("etcd", 2)])  # etcd leases: whole seconds
def test_claim_expires_without_heartbeat_and_survives_with_it(request, kind, expiry):
    """(ZooKeeper's claims live as long as the owner's session: the SIGKILL and
    SIGSTOP takeovers of tests/integration/test_scaleout.py show its expiry.)"""
    url = request.getfixturevalue(f"{kind}_url")
    a, b = _board(url, "a", expiry=expiry), _board(url, "b", expiry=expiry)
    a.post("op-1", T0)
    claim = a.claim_next(set())
    assert b.claim_next(set()) is None
    stop = threading.Event()

    def beat():
        while not stop.wait(expiry / 5):
            assert a.heartbeat(claim)

    t = threading.Thread(target=beat)
    t.start()
    try:
        time.sleep(3 * expiry)  # three expiries: only the heartbeat keeps the claim (this is the test)
        assert b.claim_next(set()) is None
    finally:
        stop.set()
        t.join()
    taken = eventually(lambda: b.claim_next(set()), 5 + 2 * expiry, "the claim to expire")
    assert taken.op_id == "op-1"
    assert a.heartbeat(claim) is False  # a's claim is b's now: a must stop


def test_extend_all_extends_our_claims_in_one_go_and_not_the_others(redis_url):
    a, b = _board(redis_url, "a", expiry=1), _board(redis_url, "b", expiry=1)
    for i in range(3):
        a.post(f"op-{i}", T0 + dt.timedelta(minutes=i))
    mine = a.claim_batch(set(), 2)
    theirs = b.claim_batch(set(), 1)
    a.expiry = 60
    assert a.extend_all([*mine, *theirs]) == [True, True, False]  # b's claim is not a's to extend
    client, _ = _raw(redis_url)
    assert all(client.pttl(c.job.owner_key) > 30_000 for c in mine)
    assert 0 < client.pttl(theirs[0].job.owner_key) <= 1000
    assert a.extend_all([]) == []


def test_heartbeat_reposts_and_reclaims_after_redis_lost_everything(redis_url):
    board = _board(redis_url, "a")
    board.post("op-1", T0)
    claim = board.claim_next(set())
    client, ns = _raw(redis_url)
    for key in client.scan_iter(f"{ns}:*"):  # what a restart without persistence does
        client.delete(key)
    assert board.waiting() == []
    assert board.heartbeat(claim) is True
    assert board.waiting() == [("op-1", True)]
    assert board.board.find_owner(claim.job) == "a"


def test_unknown_scheme_unreachable_server_and_missing_client_library_are_clear_errors(monkeypatch):
    conf = config.new_conf()
    conf([], project="computeflow", default_config_files=[])
    conf.set_override("jobboard", "amqp://localhost", "conductor")
    with pytest.raises(boards.JobboardError, match="unknown scheme 'amqp'"):
        boards.open_board(conf, "c", None)
    # Nothing listens on port 1. (taskflow's own ZooKeeper and etcd boards would
    # ignore the URL's host and port and reach a server on localhost instead.)
    conf.set_override("claim_expiry", 2, "conductor")  # ZooKeeper: give up connecting sooner
    for scheme in ("redis", "zookeeper", "etcd"):
        conf.set_override("jobboard", f"{scheme}://127.0.0.1:1", "conductor")
        with pytest.raises(boards.JobboardError, match=f"{scheme}://127.0.0.1:1: cannot connect"):
            boards.open_board(conf, "c", None)
    real_find_spec = boards.importlib.util.find_spec
    for scheme, module in (("zookeeper", "kazoo"), ("etcd", "etcd3gw")):
        monkeypatch.setattr(
            boards.importlib.util,
            "find_spec",
            lambda name, *a, m=module: None if name == m else real_find_spec(name, *a),
        )
        conf.set_override("jobboard", f"{scheme}://127.0.0.1:1", "conductor")
        with pytest.raises(boards.JobboardError, match=f"needs the Python package '{module}'"):
            boards.open_board(conf, "c", None)


# -- the service, in-process -----------------------------------------------------
@pytest.fixture
def scaleout(tmp_path, postgresql_url, redis_url) -> Iterator[Conductor]:
    clean(postgresql_url)
    conf = write_conf(
        tmp_path / "c.conf",
        tmp_path / "state",
        postgresql_url,
        f"jobboard = {redis_url}\nclaim_expiry = 3\npoll_interval = 0.05\n",
    )
    c = Conductor(config.load([str(conf)]))
    c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def service(scaleout) -> Iterator[ConductorService]:
    svc = ConductorService(scaleout, boards.open_board(scaleout.conf, scaleout.owner, scaleout.db))
    t = threading.Thread(target=svc.serve)
    t.start()
    try:
        yield svc
    finally:
        svc.stop()
        t.join(30)
        assert not t.is_alive()


def _op(c: Conductor, op_id: str) -> Operation:
    with c.db.session() as s:
        return s.get(Operation, op_id)


def test_submission_is_run_by_a_service_and_the_handle_waits(scaleout, service):
    h = scaleout.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    assert isinstance(h, OperationHandle) and isinstance(h, str)
    assert h.wait(timeout=60).state == operations.SUCCEEDED
    assert h.status().state == operations.SUCCEEDED
    eventually(lambda: scaleout.board.waiting() == [], what="the job to be consumed")
    with scaleout.db.session() as s:
        epochs = set(s.scalars(sa.select(FlowLogEntry.epoch).where(FlowLogEntry.flow_detail_uuid == h)))
    assert epochs == {1}  # one owner, one take


def test_unloadable_job_is_kept_and_reported_not_trashed(scaleout, service, tmp_path):
    op_id = str(uuid.uuid4())
    with scaleout.db.session() as s:
        operations.create(s, op_id, "teleport", None, {}, 1, None, 30)
    scaleout.board.post(op_id, utcnow())
    err = eventually(
        lambda: (_op(scaleout, op_id).error or "").startswith("not loadable here") and _op(scaleout, op_id).error,
        what="the unloadable job to be reported",
    )
    assert "unknown operation kind 'teleport'" in err[:60]  # what `ops list` shows of it
    assert "kept on the jobboard" in err
    assert _op(scaleout, op_id).state == operations.PENDING
    eventually(lambda: scaleout.board.waiting() == [(op_id, False)], what="the claim to be released")
    client, ns = _raw(scaleout.conf.conductor.jobboard)
    assert client.hlen(f"{ns}:trash") == 0
    listed = run_cli(tmp_path / "c.conf", "ops", "list")
    assert listed.returncode == 0 and "not loadable here: unknown operation kind 'teleport'" in listed.stdout


def test_job_of_an_ended_operation_is_consumed_without_running(scaleout, service):
    op_id = str(uuid.uuid4())
    with scaleout.db.session() as s:
        operations.create(s, op_id, "spawn", None, {}, 1, None, 30)
        s.flush()
        operations.mark(s, op_id, operations.SUCCEEDED)
    scaleout.board.post(op_id, utcnow())
    eventually(lambda: scaleout.board.waiting() == [], what="the job to be consumed")
    with scaleout.db.session() as s:
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(FlowLogEntry).where(FlowLogEntry.flow_detail_uuid == op_id))
            == 0
        )


def test_handle_cancel_records_the_request(scaleout):
    h = scaleout.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    outcome = h.cancel()
    assert outcome.op_id == h.id
    with scaleout.db.session() as s:
        op = operations.get(s, h.id)
        # Queued on the board, owned by no one: it ends at once, "cancelled by api".
        assert (op.state, op.cancel_requested_by) == (operations.REVERTED, "api"), op.error


def test_embedded_handle_runs_in_process_without_a_server(tmp_path, sqlite_url):
    clean(sqlite_url)
    c = Conductor(config.load([str(write_conf(tmp_path / "c.conf", tmp_path / "state", sqlite_url))]))
    try:
        c.add_host("h1", vcpus=4, ram_mb=8192, disk_gb=100)
        h = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
        assert c.board.embedded
        assert h.wait(timeout=60).state == operations.SUCCEEDED
    finally:
        c.close()


def test_embedded_service_finishes_a_dead_submitters_operation(tmp_path, sqlite_url):
    """No jobboard: `computeflow conductor` works from the operations table."""
    clean(sqlite_url)
    c = Conductor(
        config.load([str(write_conf(tmp_path / "c.conf", tmp_path / "state", sqlite_url, "poll_interval = 0.05\n"))])
    )
    try:
        c.add_host("h1", vcpus=4, ram_mb=8192, disk_gb=100)
        h = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
        with c.db.session() as s:  # its submitter died before running it
            s.execute(sa.update(Operation).where(Operation.id == h).values(owner=f"{socket.gethostname()}:999999999:0"))
        svc = ConductorService(c, boards.open_board(c.conf, c.owner, c.db))
        assert svc.board.embedded
        t = threading.Thread(target=svc.serve)
        t.start()
        try:
            eventually(lambda: h.status().state == operations.SUCCEEDED, 60, "the service to run it")
        finally:
            svc.stop()
            t.join(30)
    finally:
        c.close()
