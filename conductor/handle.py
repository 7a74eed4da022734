"""The handle `Conductor.submit(...)` returns: wait for, inspect or cancel one operation.

A handle *is* the operation id (a `str` subclass), so code that treats the
result of a submission as an id keeps working; the methods add the typed API.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from persistence import notify, operations

if TYPE_CHECKING:
    from conductor.api import Conductor, OperationStatus


class OperationTimeout(TimeoutError):
    def __init__(self, op_id: str, state: str, timeout: float) -> None:
        super().__init__(f"operation {op_id} still {state} after {timeout:g} s")
        self.op_id, self.state = op_id, state


class OperationHandle(str):
    _conductor: Conductor

    def __new__(cls, op_id: str, conductor: Conductor) -> OperationHandle:
        self = super().__new__(cls, op_id)
        self._conductor = conductor
        return self

    @property
    def id(self) -> str:
        return str(self)

    def status(self) -> OperationStatus:
        return self._conductor.status(self.id)

    def wait(self, timeout: float | None = None) -> OperationStatus:
        """The final status. Without a jobboard nobody else will run the
        operation, so it runs here; with one, a conductor service runs it and
        this returns when notified of its end (conductor/wakeups.py), looking
        at the database again after each notice and at the safety-net
        interval (OperationTimeout after `timeout`)."""
        c = self._conductor
        st = self.status()
        if c.board.embedded and st.state == operations.PENDING:
            return c.run(self.id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02  # without a notifier: a short first look, then poll_interval
        with c.wakeups.ended(self.id) as ended:
            st = self.status()  # subscribed first: an end from now on is not missed
            while st.state not in operations.FINAL_STATES:
                if deadline is not None and time.monotonic() >= deadline:
                    raise OperationTimeout(self.id, st.state, timeout)
                pause = c.wakeups.safety_interval if c.wakeups.covered(notify.ENDED) else delay
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                ended.wait(pause)
                ended.clear()
                delay = min(delay * 2, c.wakeups.poll_interval)
                st = self.status()
        return st

    def cancel(self) -> object:
        """Ask for the operation to stop at its next step boundary and revert."""
        from conductor import cancel  # cancel -> ownership; handle stays light for importers

        with self._conductor.db.session() as s:
            return cancel.request(s, self.id, "api")
