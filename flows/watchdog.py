"""One thread that fires every step deadline of the process.

A step's driver call runs in the step's own thread (flows/step_pool.py); its
deadline is not a second thread waiting beside it but an entry here. A
thousand waiting steps cost one sleeping thread, woken only when the
earliest deadline comes (or an earlier one is added), never by polling.

The thread starts with the first deadline and ends once none has been
pending for `idle_seconds`, like the pools' threads, so an idle conductor
keeps no thread for it. A cancelled deadline is dropped from the heap
lazily, and the heap is rebuilt when most of it is cancelled entries (most
deadlines are cancelled: the call returned in time), so it stays the size
of the calls in flight.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)


class Deadline:
    """A pending call of `fire` at `when` (time.monotonic()); `cancel()` it
    once the guarded work is over."""

    __slots__ = ("when", "fire", "_watchdog", "_live")

    def __init__(self, watchdog: Watchdog, when: float, fire: Callable[[], None]) -> None:
        self.when, self.fire, self._watchdog, self._live = when, fire, watchdog, True

    def cancel(self) -> None:
        self._watchdog._cancel(self)


class Watchdog:
    def __init__(self, name: str = "deadlines", *, idle_seconds: float = 5.0) -> None:
        self.name, self.idle_seconds = name, idle_seconds
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live = 0  # entries of the heap not cancelled
        self._seq = itertools.count()  # ties: first added fires first
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Deadlines added and neither fired nor cancelled."""
        with self._cond:
            return self._live

    @property
    def running(self) -> bool:
        """Whether the watchdog's thread is alive."""
        with self._cond:
            return self._thread is not None

    def add(self, when: float, fire: Callable[[], None]) -> Deadline:
        """Call `fire()` (on the watchdog's thread, so it must be quick) at `when`."""
        d = Deadline(self, when, fire)
        with self._cond:
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (when, next(self._seq), d))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            elif earliest is None or when < earliest:
                self._cond.notify()  # sleeping until a later one
        return d

    def _cancel(self, d: Deadline) -> None:
        with self._cond:
            if not d._live:
                return
            d._live = False
            self._live -= 1
            if not self._live:
                self._cond.notify()  # asleep until a cancelled deadline: start the idle count now
            if len(self._heap) > 64 and self._live < len(self._heap) // 4:
                self._heap = [e for e in self._heap if e[2]._live]
                heapq.heapify(self._heap)

    def _serve(self) -> None:
        idle_since: float | None = None
        while True:
            with self._cond:
                while True:
                    while self._heap and not self._heap[0][2]._live:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap:
                        idle_since = None
                        if self._heap[0][0] <= now:
                            d = heapq.heappop(self._heap)[2]
                            d._live = False
                            self._live -= 1
                            break
                        self._cond.wait(self._heap[0][0] - now)
                        continue
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= self.idle_seconds:
                        self._thread = None
                        return
                    self._cond.wait(self.idle_seconds - (now - idle_since))
            try:
                d.fire()
            except Exception:  # one failing deadline must not stop the others
                LOG.exception("a deadline's action failed")
