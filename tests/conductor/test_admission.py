"""Claims wait while the process's CPU is behind (conductor/admission.py)."""

from __future__ import annotations

import sys
import threading

from conductor.admission import Admission


def test_an_idle_process_has_room_and_a_busy_one_does_not():
    assert Admission(0.02).has_room(busy=False)  # nothing in flight: no probe at all
    assert Admission(0).has_room(busy=True)  # the check is off
    assert Admission(0.5).has_room(busy=True)  # nothing runnable but the test itself

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():  # pure Python: holds the interpreter lock until forced to switch
            pass

    spinners = [threading.Thread(target=spin) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)  # a waking thread waits at least this long behind a spinner
    try:
        for t in spinners:
            t.start()
        admission = Admission(0.02)
        assert not admission.has_room(busy=True)
        assert admission.last_lag >= 0.02
    finally:
        stop.set()
        for t in spinners:
            t.join()
        sys.setswitchinterval(interval)
