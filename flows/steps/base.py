"""The Step base class: a taskflow Task with fault-injection checkpoints."""
from __future__ import annotations

from taskflow import task

from flows import runtime


class Step(task.Task):
    """A task whose execute and revert pass named checkpoints.

    Checkpoints sit just before and just after the step's work, which is where
    a crash test kills the process: before the side effect, and after it but
    before taskflow has persisted the result.
    """

    def _checkpoint(self, phase: str, when: str) -> None:
        faults = runtime.current().faults
        if faults:
            faults.checkpoint(self.name, phase, when)

    def pre_execute(self) -> None:
        self._checkpoint("execute", "before")

    def post_execute(self) -> None:
        self._checkpoint("execute", "after")

    def pre_revert(self) -> None:
        self._checkpoint("revert", "before")

    def post_revert(self) -> None:
        self._checkpoint("revert", "after")

    def revert(self, *args, **kwargs) -> None:
        """Forward-only steps undo nothing."""
