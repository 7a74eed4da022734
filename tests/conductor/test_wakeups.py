"""Wake-ups (conductor/wakeups.py, persistence/notify.py) against real servers:
each source delivers its notices, a notice leaves only with its transaction's
commit, and a dropped notification connection is noticed, falls back to
polling and reconnects. Intervals are set to an hour wherever a poll could
otherwise explain an outcome: only a notice can end those waits in time."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from conductor import boards, config, wakeups
from conductor.boards import sources
from conductor.api import Conductor
from conductor.service import ConductorService
from persistence import notify, operations
from persistence.models import utcnow
from persistence.session import Database
from tests.conductor.conftest import _board
from tests.conductor.test_jobboard import eventually
from tests.conftest import clean, write_conf

HOUR = 3600.0
DEADLINE = 20.0  # generous under a loaded CI machine, and far below HOUR


class Recorder:
    """A receiver that keeps every notice, with whether its channel was covered then."""

    def __init__(self, w: wakeups.Wakeups) -> None:
        self.w, self.notices = w, queue.Queue()

    def __call__(self, channel: str | None, op_id: str | None) -> None:
        self.notices.put((channel, op_id, self.w.covered(notify.JOBS)))
        self.w.receive(channel, op_id)

    def next(self, channel: str | None, op_id: str | None = None) -> tuple:
        """The next notice on `channel` (for `op_id`), skipping others; fails after DEADLINE."""
        while True:
            try:
                notice = self.notices.get(timeout=DEADLINE)
            except queue.Empty:
                raise AssertionError(f"no {channel} notice for {op_id} within {DEADLINE} s") from None
            if notice[0] == channel and (op_id is None or notice[1] == op_id):
                return notice


class _Abandon(Exception):
    pass


def _create(db: Database, *, commit: bool = True, flow_version: int = 1) -> str:
    """A pending operation; with commit=False its transaction is rolled back."""
    op_id = str(uuid.uuid4())
    try:
        with db.session() as s:
            operations.create(s, op_id, "spawn", None, {}, flow_version, None, 30)
            s.flush()
            if not commit:
                raise _Abandon
    except _Abandon:
        pass
    return op_id


@pytest.fixture
def pg(postgresql_url) -> Iterator[Database]:
    clean(postgresql_url)
    db = Database(postgresql_url)
    yield db
    db.dispose()


def _pg_only(db: Database) -> tuple[wakeups.Wakeups, Recorder, wakeups.PgSource]:
    w = wakeups.Wakeups(poll_interval=HOUR, safety_interval=HOUR)
    rec = Recorder(w)
    src = wakeups.PgSource(db.engine, rec)
    w.add_source(src)
    assert src.wait_connected(DEADLINE)
    rec.next(None)  # "look once" after LISTEN: whatever committed before it
    return w, rec, src


def test_postgresql_notices_leave_with_the_commit_only(pg):
    w, rec, _src = _pg_only(pg)  # no in-process source: only LISTEN can deliver
    try:
        rolled_back = _create(pg, commit=False)
        op_id = _create(pg)
        with w.ended(op_id) as ended:
            assert rec.next(notify.JOBS)[1] == op_id  # the rolled-back one never came first
            with pg.session() as s:
                operations.mark(s, op_id, operations.SUCCEEDED)
            assert ended.wait(DEADLINE)
        assert rec.next(notify.ENDED)[1] == op_id
        seen = []
        while not rec.notices.empty():
            seen.append(rec.notices.get_nowait()[1])
        assert rolled_back not in seen
    finally:
        w.close()


def test_a_dropped_postgresql_listener_falls_back_to_polling_and_reconnects(pg):
    w, rec, src = _pg_only(pg)
    try:
        loop_wake = threading.Event()
        w.on_jobs(loop_wake)
        assert w.interval(notify.JOBS) == HOUR and w.covered(notify.JOBS)
        old_pid = src.backend_pid()
        with pg.session() as s:
            s.execute(sa.select(sa.func.pg_terminate_backend(old_pid)))
        _, _, covered_then = rec.next(None)  # "notices may have been missed": everyone looks
        assert not covered_then  # ... and polls at poll_interval until reconnected
        assert loop_wake.is_set()
        eventually(
            lambda: src.healthy and src.backend_pid() not in (None, old_pid), DEADLINE, "the listener to reconnect"
        )
        op_id = _create(pg)
        assert rec.next(notify.JOBS, op_id)
    finally:
        w.close()


def test_redis_notices_and_a_dropped_subscription(redis_url):
    board = _board(redis_url, "c1")
    w = wakeups.Wakeups(poll_interval=HOUR, safety_interval=HOUR)
    rec = Recorder(w)
    src = sources.RedisSource(board, rec)
    w.add_source(src)
    try:
        assert src.wait_connected(DEADLINE)
        rec.next(None)  # "look once" after subscribing
        op_id = str(uuid.uuid4())
        board.post(op_id, utcnow())
        assert rec.next(notify.JOBS, op_id)
        with w.ended(op_id) as ended:
            board.consume(board.claim_next(set()))
            assert ended.wait(DEADLINE)
        client = redis.Redis.from_url(redis_url.split("?")[0])
        try:
            assert client.client_kill_filter(_type="pubsub") >= 1
        finally:
            client.close()
        # redis-py reconnects and resubscribes on the next read; the source
        # then has everyone look once, since a notice may have been lost.
        rec.next(None)
        again = str(uuid.uuid4())
        board.post(again, utcnow())
        assert rec.next(notify.JOBS, again)
    finally:
        w.close()


@pytest.mark.parametrize("kind", ["zookeeper", "etcd"])
def test_zookeeper_and_etcd_watches_announce_new_jobs(request, kind):
    url = request.getfixturevalue(f"{kind}_url")
    watched, poster = _board(url, "c1"), _board(url, "c2")  # as two conductors
    w = wakeups.Wakeups(poll_interval=HOUR, safety_interval=HOUR)
    rec = Recorder(w)
    src = (sources.ZookeeperSource if kind == "zookeeper" else sources.EtcdSource)(watched, rec)
    w.add_source(src)
    try:
        eventually(lambda: src.healthy, DEADLINE, "the watch to start")
        loop_wake = threading.Event()
        w.on_jobs(loop_wake)
        poster.post(str(uuid.uuid4()), utcnow())
        assert rec.next(notify.JOBS)
        assert loop_wake.is_set()
    finally:
        w.close()


def test_sqlite_submission_wakes_a_service_of_the_same_process(tmp_path, sqlite_url):
    """No server: the in-process hub wakes a loop that would otherwise sleep an hour."""
    clean(sqlite_url)
    conf = write_conf(
        tmp_path / "c.conf", tmp_path / "state", sqlite_url, f"poll_interval = {HOUR}\nsafety_poll_interval = {HOUR}\n"
    )
    c = Conductor(config.load([str(conf)]))
    svc = ConductorService(c, boards.open_board(c.conf, c.owner, c.db))
    t = threading.Thread(target=svc.serve)
    t.start()
    try:
        eventually(lambda: svc.wakeups is not None, DEADLINE, "the service to start")
        # A flow version this conductor does not know: it looks, reports, leaves it.
        first = _create(c.db, flow_version=999)
        eventually(lambda: _reported(c, first), DEADLINE, "the service to look at the first")
        second = _create(c.db, flow_version=999)  # the loop sleeps its hour by now
        eventually(lambda: _reported(c, second), DEADLINE, "the notice to wake the service")
    finally:
        svc.stop()
        t.join(30)
        c.close()
    assert not t.is_alive()


def _reported(c: Conductor, op_id: str) -> bool:
    return (c.status(op_id).error or "").startswith("not loadable here")
