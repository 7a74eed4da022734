"""Claim new work only while this process's CPU keeps up with the work it has.

Every flow of a conductor runs its steps on threads of one Python process,
which take turns on one interpreter lock. A claimed job starts a flow whose
first steps compete for that lock with the steps of every flow already
running, so claiming a burst as fast as the board hands it out slows every
operation in flight: the operations started last ran at the pace of all of
them (a 1,000-spawn burst: per-operation run time p99/p50 1.3-1.7 from one
run to the next, measured in bench/fleet_bench.py). Waiting steps do not
count: they hold no lock.

The measure is how late a short sleep returns: a thread that wakes waits for
the lock behind the runnable ones, so the delay grows with the work that is
ready to run and is ~0 on an idle process. Above `[conductor]
admission_lag_ms` the service waits a moment and looks again instead of
claiming; the jobs wait on the board, in order, where their run time has not
started yet. The probe runs only while the process has operations in flight,
so an idle conductor's first claim is not delayed.
"""

from __future__ import annotations

import time

#: How long the probe sleeps; its lateness beyond this is the measure.
PROBE_SECONDS = 0.001


class Admission:
    """Whether the service may claim more now (see the module docstring)."""

    def __init__(self, max_lag_seconds: float) -> None:
        self.max_lag = max_lag_seconds
        #: The last lateness measured, in seconds (for logs and tests).
        self.last_lag = 0.0

    def has_room(self, busy: bool) -> bool:
        """True when nothing runs here (`busy` False), when the check is off
        (0), or when a probe sleep came back within the allowed lateness."""
        if not busy or self.max_lag <= 0:
            return True
        start = time.monotonic()
        time.sleep(PROBE_SECONDS)
        self.last_lag = time.monotonic() - start - PROBE_SECONDS
        return self.last_lag < self.max_lag
