"""Wake-up notices from the database: "a job is waiting" and "an operation ended".

A conductor should start a submitted operation, and a waiter should return
from `wait()`, as soon as the row says so, not at its next poll. The writing
side calls `announce(session, channel, op_id)` inside the transaction that
makes the change; the notice leaves only if that transaction commits:

* on PostgreSQL as `pg_notify` in the same transaction, which the server
  delivers at commit to every `LISTEN`ing process (`PgListener` below);
* in every dialect to the listeners of this process (`local_hub`), after
  the commit: the embedded SQLite mode, where submitter and runner share a
  process, needs no server for that.

Receiving is best effort by design: a notice may be lost (a listener that was
reconnecting), so every receiver keeps a slow safety-net poll, and a listener
reports `healthy` so that its users poll quickly while it is not.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

LOG = logging.getLogger(__name__)

JOBS = "computeflow_jobs"  # payload: the operation id that became claimable (submitted, freed)
ENDED = "computeflow_ended"  # payload: the operation id that reached a final state
CHANNELS = (JOBS, ENDED)
_PENDING = "computeflow_announcements"

# A receiver: called with (channel, operation id); channel None means "notices
# may have been missed" (a listener (re)connected or lost its connection).
Receiver = Callable[[str | None, str | None], None]


def announce(s: Session, channel: str, op_id: str) -> None:
    """Tell listeners about `op_id` once the session's transaction commits."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(sa.select(sa.func.pg_notify(channel, op_id)))
    s.info.setdefault(_PENDING, []).append((channel, op_id))


def attach(sessions: sessionmaker[Session]) -> None:
    """Deliver the announcements of these sessions' commits (persistence.session.Database
    calls it for its session factory; nothing is registered by importing this module)."""
    event.listen(sessions, "after_commit", _deliver_locally)
    event.listen(sessions, "after_soft_rollback", _forget)


def _deliver_locally(s: Session) -> None:
    pending = s.info.pop(_PENDING, None)
    if pending:
        hub = local_hub(s.get_bind())
        for channel, op_id in pending:
            hub.deliver(channel, op_id)


def _forget(s: Session, _previous: object) -> None:
    s.info.pop(_PENDING, None)


class LocalHub:
    """The notices committed by this process, for receivers in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._receivers: list[Receiver] = []

    def subscribe(self, receiver: Receiver) -> None:
        with self._lock:
            self._receivers.append(receiver)

    def unsubscribe(self, receiver: Receiver) -> None:
        with self._lock:
            if receiver in self._receivers:
                self._receivers.remove(receiver)

    def deliver(self, channel: str | None, op_id: str | None) -> None:
        with self._lock:
            receivers = list(self._receivers)
        for r in receivers:
            try:
                r(channel, op_id)
            except Exception:  # noqa: BLE001 - a receiver's bug must not fail the committer
                LOG.exception("wake-up receiver failed")


_hubs: dict[str, LocalHub] = {}
_hubs_lock = threading.Lock()


def local_hub(engine: Engine | sa.Connection) -> LocalHub:
    """One hub per database (by URL): two engines on one SQLite file share it."""
    key = engine.engine.url.render_as_string(hide_password=False)
    with _hubs_lock:
        return _hubs.setdefault(key, LocalHub())


class ListenerThread:
    """A daemon thread keeping one subscription alive (PostgreSQL LISTEN, Redis
    pub/sub, an etcd watch): `healthy` while connected. A lost subscription
    tells the receiver that notices may have been missed (`_lost`), so that
    waiters look for themselves; the subclass's `_run` reconnects until
    `_stop` is set. Subclasses set their fields, then call `_start`."""

    def __init__(self, receiver: Receiver, thread_name: str) -> None:
        self.receiver = receiver
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _lost(self) -> None:
        """Connected no more; if it was, everyone looks once (a notice may be lost)."""
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.receiver(None, None)


class PgListener(ListenerThread):
    """A thread that LISTENs on its own PostgreSQL connection (outside the
    pool, so the pool's bound holds for the work) and hands every notice to
    `receiver`. A lost connection makes it unhealthy, tells the receiver that
    notices may have been missed, and reconnects with a growing pause; it
    never blocks anyone."""

    def __init__(self, engine: Engine, receiver: Receiver, *, check_interval: float = 5.0) -> None:
        super().__init__(receiver, "pg-listen")
        self.engine, self.check_interval = engine, check_interval
        self._conn = None
        self._interrupt_r, self._interrupt_w = os.pipe()  # close() ends a select at once
        self._start()

    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (tests terminate it)."""
        conn = self._conn
        return conn.get_backend_pid() if conn is not None and self.healthy else None

    def close(self) -> None:
        self._stop.set()
        os.write(self._interrupt_w, b"x")
        self._thread.join(self.check_interval + 5)
        os.close(self._interrupt_r)
        os.close(self._interrupt_w)

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
                pause = 0.1
            except Exception as e:  # noqa: BLE001 - any failure: reconnect; the safety poll covers
                if self._stop.is_set():
                    break
                LOG.warning("database notifications lost (%s); polling until reconnected", e)
            finally:
                self._drop()
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def _listen(self) -> None:
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.engine.url)
        cparams = {**cparams, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
        conn = self._conn = dialect.loaded_dbapi.connect(*cargs, **cparams)
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel in CHANNELS:
                cur.execute(f"LISTEN {channel}")
        self._connected.set()
        self.receiver(None, None)  # anything committed before LISTEN: look once
        while not self._stop.is_set():
            ready, _, _ = select.select([conn, self._interrupt_r], [], [], self.check_interval)
            if self._stop.is_set():
                return
            if not ready:
                with conn.cursor() as cur:  # idle: prove the connection is still there
                    cur.execute("SELECT 1")
            conn.poll()
            while conn.notifies:
                n = conn.notifies.pop(0)
                self.receiver(n.channel, n.payload)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        self._lost()  # waiters re-read and switch to the fast poll
