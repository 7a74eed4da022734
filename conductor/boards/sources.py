"""Wake-up sources of the jobboard servers (conductor/wakeups.py): each
board offers its own through `Board.wakeup_source`, and this module is loaded
with the board, so a conductor on the embedded board never imports a
jobboard client library.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis import exceptions as redis_exc
from taskflow.jobs import base as jobs_base

from conductor.boards import taskflow_internals
from persistence import notify

if TYPE_CHECKING:
    from conductor.boards.redis_board import RedisBoard
    from conductor.boards.taskflow_board import TaskflowBoard

LOG = logging.getLogger(__name__)


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

    def _reconnected(self, _connection: object) -> None:
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
        self._callback: Callable[..., None] = lambda _state, details=None: receiver(notify.JOBS, None)
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
        self._cancel: Callable[[], object] | None = None
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
