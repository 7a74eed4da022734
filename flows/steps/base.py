"""The Step base class: a taskflow Task with fault-injection checkpoints."""
from __future__ import annotations

import functools
from collections.abc import Callable

from taskflow import task

from flows import runtime


def _checkpoint(step: str, phase: str, when: str) -> None:
    faults = runtime.current().faults
    if faults:
        faults.checkpoint(step, phase, when)


def _with_checkpoints(fn: Callable, phase: str) -> Callable:
    """Wrap execute/revert so faults fire just before and just after the work.

    `after` sits inside the call, so an injected failure there is a failure of
    a step whose side effect already happened: exactly what its revert (or
    its re-execution after a crash) must cope with. functools.wraps keeps the
    signature that taskflow reads to bind arguments.
    """
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        _checkpoint(self.name, phase, "before")
        result = fn(self, *args, **kwargs)
        _checkpoint(self.name, phase, "after")
        return result
    wrapper._checkpointed = True
    return wrapper


class Step(task.Task):
    """A task whose execute and revert pass named checkpoints (see _with_checkpoints)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for phase in ("execute", "revert"):
            fn = cls.__dict__.get(phase)
            if fn is not None and not getattr(fn, "_checkpointed", False):
                setattr(cls, phase, _with_checkpoints(fn, phase))

    def revert(self, *args, **kwargs) -> None:
        """Forward-only steps undo nothing."""


# Steps that undo nothing still have revert boundaries a crash test can hit.
Step.revert = _with_checkpoints(Step.revert, "revert")
