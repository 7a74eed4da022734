"""A thread pool that grows on demand and shrinks when idle.

Hypervisor steps mostly wait (an image copy, a boot, a network event). A
fixed pool of a few threads lets a handful of waiting steps stop every other
flow; a fixed pool of thousands keeps thousands of threads for a burst that
came once. This pool starts a thread only when a task finds none idle, up to
`max_threads`, and a thread idle for `idle_seconds` exits, so a process holds
about as many threads as it has work in flight, and returns their memory
after a burst.

Tasks start in the order they were submitted (one FIFO queue): when the cap
is reached, the oldest waiting task gets the next free thread, so none
starves. The standard ThreadPoolExecutor also grows on demand but never
shrinks; taskflow's parallel engine accepts any `concurrent.futures.Executor`.

It lives in flows/ because steps use it too (flows/step_pool.py, the pool
steps run on, is one) and the conductor imports flows.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

LOG = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
#: A submitted task: its future, the callable and its arguments.
_Task = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], contextvars.Context]


class ElasticThreadPool(futures.Executor):
    """An Executor of at most `max_threads` threads, each started when a task
    finds no idle one and ended after `idle_seconds` without work."""

    def __init__(self, max_threads: int, *, idle_seconds: float = 5.0, name: str = "elastic") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, not {max_threads}")
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be > 0, not {idle_seconds}")
        self.max_threads, self.idle_seconds, self.name = max_threads, idle_seconds, name
        self._queue: collections.deque[_Task] = collections.deque()
        self._cond = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._started = 0  # for thread names only
        self._shutdown = False

    # -- what callers and tests read ------------------------------------------
    @property
    def threads(self) -> int:
        """Threads alive now (running a task or idle)."""
        with self._cond:
            return len(self._threads)

    @property
    def idle_threads(self) -> int:
        """Threads waiting for a task."""
        with self._cond:
            return self._idle

    @property
    def queued(self) -> int:
        """Tasks submitted and not started yet."""
        with self._cond:
            return len(self._queue)

    # -- Executor ---------------------------------------------------------------
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        fut: futures.Future[T] = futures.Future()
        new = None
        with self._cond:
            if self._shutdown:
                raise RuntimeError(f"{self.name} pool is shut down: cannot submit")
            # The submitter's context variables travel with the task (the
            # active runtime, flows/runtime.py), as asyncio does for callbacks.
            self._queue.append((fut, fn, args, kwargs, contextvars.copy_context()))
            # Every idle thread will take one queued task; start a thread only
            # for a task that none of them will take.
            if len(self._queue) > self._idle and len(self._threads) < self.max_threads:
                new = self._new_thread()
            self._cond.notify()
        if new is not None:
            # Started outside the lock: Thread.start() waits until the new
            # thread runs, which under a busy GIL took milliseconds during
            # which every submit and every finishing task queued on the lock.
            new.start()
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            threads = list(self._threads)
            self._cond.notify_all()
        if wait:
            for t in threads:
                if t.ident is not None:  # one being started by a submit sees the shutdown
                    t.join()

    # -- the threads ------------------------------------------------------------
    def _new_thread(self) -> threading.Thread:
        """A thread counted as the pool's (under the lock); the caller starts it."""
        self._started += 1
        t = threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True)
        self._threads.add(t)
        return t

    def _detach(self, thread: threading.Thread) -> None:
        """`thread` no longer counts as one of the pool's: it ends once its
        task returns (a subclass gives up on a task it cannot stop), and a
        queued task gets a thread of its own meanwhile."""
        new = None
        with self._cond:
            if thread not in self._threads:
                return
            self._threads.discard(thread)
            if len(self._queue) > self._idle and len(self._threads) < self.max_threads:
                new = self._new_thread()
        if new is not None:
            new.start()

    def _run(
        self, fut: futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Run one task and settle its future (a subclass adds what it needs)."""
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, as ThreadPoolExecutor does
            fut.set_exception(e)
        else:
            fut.set_result(result)

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                if me not in self._threads:  # detached while running its last task
                    return
                deadline = time.monotonic() + self.idle_seconds
                while not self._queue and not self._shutdown:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._idle += 1
                    self._cond.wait(remaining)
                    self._idle -= 1
                if not self._queue:  # idle too long, or shut down with nothing left
                    self._threads.discard(me)
                    return
                fut, fn, args, kwargs, ctx = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            ctx.run(self._run, fut, fn, args, kwargs)
            del fut, fn, args, kwargs, ctx  # a finished task must not stay referenced while idle
