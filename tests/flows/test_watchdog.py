"""The watchdog: one thread fires every deadline, in order, none that was
cancelled, and ends when none is left."""

from __future__ import annotations

import threading
import time

from flows.watchdog import Watchdog


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_deadlines_fire_in_order_on_one_thread_and_cancelled_ones_never():
    w = Watchdog("t", idle_seconds=0.2)
    fired: list[tuple[str, str]] = []
    last = threading.Event()
    now = time.monotonic()

    def fire(name: str):
        def f() -> None:
            fired.append((name, threading.current_thread().name))
            if name == "c":
                last.set()

        return f

    # Added out of order, the later one first: the thread must wake earlier for "a".
    w.add(now + 0.2, fire("c"))
    w.add(now + 0.05, fire("a"))
    cancelled = w.add(now + 0.1, fire("b"))
    cancelled.cancel()
    assert w.pending == 2
    assert last.wait(10)
    assert fired == [("a", "t"), ("c", "t")]
    assert w.pending == 0
    _until(lambda: not w.running)  # no deadline left: its thread ends


def test_a_thousand_cancelled_deadlines_leave_no_heap_behind():
    w = Watchdog("t", idle_seconds=0.2)
    far = time.monotonic() + 3600
    for d in [w.add(far, lambda: None) for _ in range(1000)]:
        d.cancel()
    assert w.pending == 0
    live = w.add(far, lambda: None)  # the next deadline added finds the heap mostly dead: rebuilt
    assert len(w._heap) <= 64  # not a thousand dead entries for an hour
    live.cancel()
    _until(lambda: not w.running)  # ended without waiting for the cancelled hour to pass
    assert w._heap == []


def test_a_failing_action_does_not_stop_the_others():
    w = Watchdog("t", idle_seconds=0.2)
    done = threading.Event()
    now = time.monotonic()
    w.add(now, lambda: 1 / 0)
    w.add(now + 0.01, done.set)
    assert done.wait(10)
