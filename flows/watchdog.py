"""One thread that fires every step deadline of the process.

A step's driver call runs in the step's own thread (flows/step_pool.py); its
deadline is not a second thread waiting beside it but an entry here. A
thousand waiting steps cost one sleeping thread, woken only when the
earliest deadline comes (or an earlier one is added), never by polling.

The thread starts with the first deadline and ends once none has been
pending for `idle_seconds`, like the pools' threads, so an idle conductor
keeps no thread for it. Cancelling takes no lock (every step cancels its
deadline); a cancelled deadline is dropped from the heap lazily, by the
thread (which wakes at least every `idle_seconds` while deadlines are
pending) or by a later `add`, and the heap is rebuilt when most of it is
cancelled entries, so it stays about the size of the calls in flight.
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
        """No lock taken: every step cancels its deadline, and a lock shared by
        a thousand step threads was a measured hot spot. The entry leaves the
        heap when the watchdog or a later `add` comes across it."""
        if self._live:
            self._live = False
            self._watchdog._cancelled += 1  # a hint for compaction: a lost update is harmless


class Watchdog:
    def __init__(self, name: str = "deadlines", *, idle_seconds: float = 5.0) -> None:
        self.name, self.idle_seconds = name, idle_seconds
        self._heap: list[tuple[float, int, Deadline]] = []
        self._cancelled = 0  # entries of the heap cancelled since it was last compacted (about)
        self._seq = itertools.count()  # ties: first added fires first
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Deadlines added and neither fired nor cancelled."""
        with self._cond:
            return sum(1 for e in self._heap if e[2]._live)

    @property
    def running(self) -> bool:
        """Whether the watchdog's thread is alive."""
        with self._cond:
            return self._thread is not None

    def add(self, when: float, fire: Callable[[], None]) -> Deadline:
        """Call `fire()` (on the watchdog's thread, so it must be quick) at `when`."""
        d = Deadline(self, when, fire)
        new = None
        with self._cond:
            if len(self._heap) > 64 and self._cancelled > len(self._heap) * 3 // 4:
                self._compact()
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (when, next(self._seq), d))
            if self._thread is None:
                new = self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            elif earliest is None or when < earliest:
                self._cond.notify()  # sleeping until a later one
        if new is not None:
            new.start()
        return d

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2]._live]
        heapq.heapify(self._heap)
        self._cancelled = 0

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
                            break
                        # Wake at least every idle_seconds: cancelled entries
                        # are dropped here (cancelling takes no lock, wakes nobody).
                        if self._cancelled > len(self._heap) * 3 // 4:
                            self._compact()
                        self._cond.wait(min(self._heap[0][0] - now, self.idle_seconds) if self._heap else 0)
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
