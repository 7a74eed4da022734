"""Event-driven wake-ups: a conductor learns of a new job, and a waiter of an
ended operation, when it happens instead of at its next poll.

Sources, each a thread or callback feeding one `Wakeups` (docs/scale-out.md):

| source | carries | how |
|---|---|---|
| this process (`persistence.notify.local_hub`) | jobs, ended | after each commit; always on |
| PostgreSQL (`persistence.notify.PgListener`) | jobs, ended | LISTEN/NOTIFY sent by the committing transaction |
| Redis board (`boards.sources.RedisSource`) | jobs, ended | pub/sub: posting, releasing and consuming a job publish |
| ZooKeeper board (`boards.sources.ZookeeperSource`) | jobs | the board's own children watch (taskflow's POSTED) |
| etcd board (`boards.sources.EtcdSource`) | jobs | a watch on the board's job prefix |

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

from conductor.boards import Board
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
    source = board.wakeup_source(w.receive)  # a jobboard server's own notices
    if source is not None:
        w.add_source(source)
    return w
