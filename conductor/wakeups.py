"""Event-driven wake-ups: a conductor learns of a new job, and a waiter of an
ended operation, when it happens instead of at its next poll.

Sources, each a thread or callback feeding one `Wakeups` (docs/scale-out.md):

| source | carries | how |
|---|---|---|
| this process (`persistence.notify.local_hub`) | jobs, ended | after each commit; always on |
| PostgreSQL (`persistence.notify.PgListener`) | jobs, ended | LISTEN/NOTIFY sent by the committing transaction |
| Redis board (`RedisSource`) | jobs, ended | pub/sub: posting, releasing and consuming a job publish |
| ZooKeeper board (`ZookeeperSource`) | jobs | the board's own children watch (taskflow's POSTED) |
| etcd board (`EtcdSource`) | jobs | a watch on the board's job prefix |

Polling stays as the safety net: `interval(channel)` is `[conductor]
safety_poll_interval` while a cross-process source carrying that channel is
connected, `poll_interval` otherwise (SQLite across processes, MySQL, a source
reconnecting). A source that loses its connection tells every receiver that
notices may have been missed (they look at once and poll quickly), then
reconnects by itself; nothing ever waits on a source alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from oslo_config import cfg
from redis import exceptions as redis_exc
from taskflow.jobs import base as jobs_base

from conductor.boards import Board, RedisBoard, TaskflowBoard, taskflow_internals
from persistence import notify
from persistence.session import Database

LOG = logging.getLogger(__name__)


class Wakeups:
    """Fan-in of every notice source; fan-out to the loops and waiters of this process."""

    def __init__(self, poll_interval: float, safety_interval: float) -> None:
        self.poll_interval, self.safety_interval = poll_interval, safety_interval
        self._lock = threading.Lock()
        self._job_events: set[threading.Event] = set()
        self._ended: dict[str, set[threading.Event]] = {}
        self._sources: list = []
        self._closers: list = []

    # -- what receivers use ---------------------------------------------------
    def covered(self, channel: str) -> bool:
        """Whether a connected source brings this channel's notices from other processes."""
        return any(s.healthy and channel in s.carries for s in self._sources)

    def interval(self, channel: str) -> float:
        """How long to wait before looking again without a notice."""
        return self.safety_interval if self.covered(channel) else self.poll_interval

    def on_jobs(self, event: threading.Event) -> None:
        """Set `event` whenever a job may be waiting (a conductor loop's wake event)."""
        with self._lock:
            self._job_events.add(event)

    @contextlib.contextmanager
    def ended(self, op_id: str) -> Iterator[threading.Event]:
        """An event set when `op_id` may have ended; subscribe before reading its state."""
        event = threading.Event()
        with self._lock:
            self._ended.setdefault(op_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._ended.get(op_id, set())
                waiting.discard(event)
                if not waiting:
                    self._ended.pop(op_id, None)

    # -- what sources call ----------------------------------------------------
    def receive(self, channel: str | None, op_id: str | None) -> None:
        """A notice; channel None: notices may have been missed, wake everyone."""
        with self._lock:
            if channel in (None, notify.JOBS):
                events = list(self._job_events)
            else:
                events = []
            if channel is None:
                events += [e for waiting in self._ended.values() for e in waiting]
            elif channel == notify.ENDED and op_id is not None:
                events += list(self._ended.get(op_id, ()))
        for e in events:
            e.set()

    def add_source(self, source) -> None:
        self._sources.append(source)

    def close(self) -> None:
        for source in self._sources:
            try:
                source.close()
            except Exception:  # noqa: BLE001 - closing must not fail shutdown
                LOG.debug("closing a wake-up source failed", exc_info=True)
        self._sources.clear()


class LocalSource:
    """Notices committed by this very process (any database, SQLite included)."""

    carries: tuple[str, ...] = ()  # same process only: it cannot stretch the poll interval
    healthy = True

    def __init__(self, db: Database, receiver: notify.Receiver) -> None:
        self.hub, self.receiver = notify.local_hub(db.engine), receiver
        self.hub.subscribe(receiver)

    def close(self) -> None:
        self.hub.unsubscribe(self.receiver)


class PgSource(notify.PgListener):
    carries = notify.CHANNELS


class RedisSource(notify.ListenerThread):
    """Pub/sub on the board's Redis, on a connection of its own (the board's pool)."""

    carries = notify.CHANNELS

    def __init__(self, board: RedisBoard, receiver: notify.Receiver) -> None:
        super().__init__(receiver, "redis-wakeups")
        self.client = board.client
        self.names = {v: k for k, v in board.channels.items()}
        self._start()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*self.names)
                # redis-py reconnects and resubscribes by itself: a notice may
                # have been published in between, so have everyone look once.
                pubsub.connection.register_connect_callback(self._reconnected)
                self._connected.set()
                self.receiver(None, None)
                pause = 0.1
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is not None and msg["type"] == "message":
                        self.receiver(self.names.get(msg["channel"]), msg["data"].decode())
            except (redis_exc.RedisError, OSError) as e:
                if not self._stop.is_set():
                    LOG.warning("jobboard notifications lost (%s); polling until reconnected", e)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                self._lost()
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def _reconnected(self, _connection) -> None:
        LOG.info("jobboard notifications resubscribed after a lost connection")
        self.receiver(None, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class ZookeeperSource:
    """taskflow's ZooKeeper board watches its job children itself and emits
    POSTED for each new job: listen to that."""

    carries = (notify.JOBS,)

    def __init__(self, board: TaskflowBoard, receiver: notify.Receiver) -> None:
        self.board = board.board
        self._callback = lambda _state, details=None: receiver(notify.JOBS, None)
        self.board.notifier.register(jobs_base.POSTED, self._callback)

    @property
    def healthy(self) -> bool:
        return bool(self.board.connected)

    def close(self) -> None:
        self.board.notifier.deregister(jobs_base.POSTED, self._callback)


class EtcdSource(notify.ListenerThread):
    """A watch on the etcd board's job prefix (taskflow's own watch only feeds
    its cache): any change of a job's data is a notice."""

    carries = (notify.JOBS,)

    def __init__(self, board: TaskflowBoard, receiver: notify.Receiver) -> None:
        b = board.board
        super().__init__(receiver, "etcd-wakeups")
        self.client = taskflow_internals.etcd_client(b)
        self.prefix, self.data_suffix = taskflow_internals.etcd_job_keys(b)
        self._cancel = None
        self._start()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                events, self._cancel = self.client.watch_prefix(self.prefix)
                self._connected.set()
                self.receiver(None, None)
                pause = 0.1
                for ev in events:
                    key = ev.get("kv", {}).get("key", b"")
                    key = key.decode() if isinstance(key, bytes) else key
                    if key.endswith(self.data_suffix) and ev.get("type") != "DELETE":
                        self.receiver(notify.JOBS, None)
            except Exception as e:  # noqa: BLE001 - etcd3gw raises requests' errors too
                if not self._stop.is_set():
                    LOG.warning("jobboard notifications lost (%s); polling until reconnected", e)
            finally:
                self._lost()
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def close(self) -> None:
        self._stop.set()
        if self._cancel is not None:
            with contextlib.suppress(Exception):
                self._cancel()
        self._thread.join(5)


def open_wakeups(conf: cfg.ConfigOpts, db: Database, board: Board) -> Wakeups:
    """Every source this configuration offers; with `[conductor] wakeups =
    false`, none: poll_interval alone, as before."""
    opts = conf.conductor
    w = Wakeups(opts.poll_interval, opts.safety_poll_interval)
    if not opts.wakeups:
        return w
    w.add_source(LocalSource(db, w.receive))
    if db.dialect == "postgresql" and db.engine.dialect.driver == "psycopg2":
        w.add_source(PgSource(db.engine, w.receive))
    if isinstance(board, RedisBoard):
        w.add_source(RedisSource(board, w.receive))
    elif isinstance(board, TaskflowBoard):
        kind = board.board.__class__.__name__
        if kind.startswith("Zookeeper"):
            w.add_source(ZookeeperSource(board, w.receive))
        elif kind.startswith("Etcd"):
            w.add_source(EtcdSource(board, w.receive))
    return w
