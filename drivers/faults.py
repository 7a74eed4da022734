"""Fault injection at named steps: fail, hang or kill the process.

A spec is `STEP:PHASE:ACTION[:WHEN]`; `fail-transient-N` fails N times with
a transient error (which steps retry with backoff), then lets the step pass.
Steps call `FaultPlan.checkpoint` before and after their side effect; a
matching fault fires there. `kill` sends SIGKILL to this very process, which
is what a crash test needs: nothing after it runs, no finally block, no flush.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from computeflow.errors import ComputeflowError
from drivers.errors import InjectedFault, InjectedTransientFault

PHASES = ("execute", "revert")
ACTIONS = ("fail", "fail-once", "fail-transient-N", "hang", "kill")
TRANSIENT = "fail-transient-"
WHENS = ("before", "after")


class BadFaultSpec(ComputeflowError, ValueError):
    """A `[fake] faults` entry that cannot be right."""


@dataclass(frozen=True)
class Fault:
    step: str
    phase: str
    action: str
    when: str = "before"

    @classmethod
    def parse(cls, spec: str) -> Fault:
        parts = spec.strip().split(":")
        if len(parts) not in (3, 4):
            raise BadFaultSpec(f"fault {spec!r}: expected STEP:PHASE:ACTION[:WHEN]")
        fault = cls(*parts)
        if fault.phase not in PHASES:
            raise BadFaultSpec(f"fault {spec!r}: phase must be one of {', '.join(PHASES)}")
        if fault.action not in ACTIONS and fault.transient_count is None:
            raise BadFaultSpec(f"fault {spec!r}: action must be one of {', '.join(ACTIONS)}")
        if fault.when not in WHENS:
            raise BadFaultSpec(f"fault {spec!r}: when must be one of {', '.join(WHENS)}")
        return fault

    @property
    def transient_count(self) -> int | None:
        """N of `fail-transient-N` (N >= 1), else None."""
        n = self.action[len(TRANSIENT) :] if self.action.startswith(TRANSIENT) else ""
        return int(n) if n.isdigit() and int(n) >= 1 else None


class FaultPlan:
    """The faults armed in this process."""

    def __init__(self, specs: list[str] | tuple[str, ...] = ()) -> None:
        self._faults = [Fault.parse(s) for s in specs if s.strip()]
        self._lock = threading.Lock()
        self.release_hangs = threading.Event()
        #: Calls held by a `hang` fault right now: a test that changes the plan
        #: while a step hangs waits for this, not for the step's RUNNING row
        #: (written before the step's thread reaches the checkpoint).
        self.hanging = 0
        self._transient_left: dict[Fault, int] = {}

    def __bool__(self) -> bool:
        return bool(self._faults)

    def arm(self, spec: str) -> None:
        with self._lock:
            self._faults.append(Fault.parse(spec))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._transient_left.clear()

    def checkpoint(self, step: str, phase: str, when: str) -> None:
        with self._lock:
            hits = [f for f in self._faults if (f.step, f.phase, f.when) == (step, phase, when)]
            for f in hits:
                if f.action == "fail-once":
                    self._faults.remove(f)
            transient = []
            for f in hits:
                if f.transient_count is not None:
                    left = self._transient_left.setdefault(f, f.transient_count)
                    if left > 0:
                        self._transient_left[f] = left - 1
                        transient.append(left - 1)
        for fault in hits:
            if fault.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault.action == "hang":
                with self._lock:
                    self.hanging += 1
                try:
                    self.release_hangs.wait()
                finally:
                    with self._lock:
                        self.hanging -= 1
            if fault.action in ("fail", "fail-once"):
                raise InjectedFault(step, phase)
        if transient:
            raise InjectedTransientFault(step, phase, transient[0])
