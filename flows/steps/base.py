"""The Step base class: a taskflow Task with fault-injection checkpoints."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from taskflow import task

from flows import runtime
from flows.steps import attempts

_Fn = TypeVar("_Fn", bound=Callable[..., object])


def _checkpoint(step: str, phase: str, when: str) -> None:
    faults = runtime.current().faults
    if faults:
        faults.checkpoint(step, phase, when)


def _with_checkpoints(fn: _Fn, phase: str) -> _Fn:
    """Wrap execute/revert so faults fire just before and just after the work.

    `after` sits inside the call, so an injected failure there is a failure of
    a step whose side effect already happened: exactly what its revert (or
    its re-execution after a crash) must cope with. functools.wraps keeps the
    signature that taskflow reads to bind arguments.

    The work then runs through `attempts.run`: cancel check, deadline and
    retries of transient errors. Those need the operation id, so a step that
    does not ask for `operation_id` gets it as an optional argument of the
    wrapper (taskflow passes optional arguments found in the store) that is
    not handed on.
    """
    sig = inspect.signature(fn)
    wants_op = "operation_id" in sig.parameters

    @functools.wraps(fn)
    def wrapper(self: Step, *args: Any, **kwargs: Any) -> object:
        op_id = kwargs.get("operation_id") if wants_op else kwargs.pop("operation_id", None)

        def work() -> object:
            _checkpoint(self.name, phase, "before")
            result = fn(self, *args, **kwargs)
            _checkpoint(self.name, phase, "after")
            return result

        return attempts.run(self, phase, op_id, work)

    marked: Any = wrapper  # function attributes taskflow and __init_subclass__ read
    marked._checkpointed = True
    if not wants_op:
        marked.__signature__ = _with_operation_id(sig)
    return cast(_Fn, wrapper)  # the same call signature (plus optional operation_id)


def _with_operation_id(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())
    extra = inspect.Parameter("operation_id", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    return sig.replace(parameters=params[:at] + [extra] + params[at:])


#: probe_guest values beyond a power state: the guest exists / does not.
GUEST_DEFINED, GUEST_ABSENT = "defined", "absent"


class Step(task.Task):
    """A task whose execute and revert pass named checkpoints (see _with_checkpoints)."""

    #: Deadline of one attempt of execute or revert, in seconds; None: the
    #: [conductor] step_timeout option, 0: none (see flows/steps/attempts.py).
    step_timeout: float | None = None
    #: How recovery asks the hypervisor whether this step's effect is there
    #: (conductor/recovery.py): the guest's power state on the host named by
    #: `probe_host_arg` once the step is done, or GUEST_DEFINED / GUEST_ABSENT;
    #: None: the step is not probed.
    probe_guest: str | None = None
    probe_host_arg: str = "host"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for phase in ("execute", "revert"):
            fn = cls.__dict__.get(phase)
            if fn is not None and not getattr(fn, "_checkpointed", False):
                setattr(cls, phase, _with_checkpoints(fn, phase))

    def revert(self, *args: Any, **kwargs: Any) -> None:
        """Forward-only steps undo nothing."""

    def _build_arg_mapping(
        self,
        executor: Callable[..., object],
        requires: Any = None,
        rebind: Any = None,
        auto_extract: bool = True,
        ignore_list: list[str] | None = None,
    ) -> tuple[Any, Any, Any]:
        """taskflow's argument mapping (Atom._build_arg_mapping), remembered per
        step class and arguments: taskflow reads the method's signature anew
        for each execute and revert of each step built, most of the time a
        flow takes to build (1.16 -> 0.19 ms for a spawn's flow). A
        copy each time: taskflow keeps them as the atom's own."""
        inject = sorted(self.inject) if self.inject else None  # taskflow leaves injected names out
        key = (type(self), executor.__name__, repr((requires, rebind, auto_extract, ignore_list, inject)))
        known = _ARG_MAPPINGS.get(key)
        if known is None:
            known = super()._build_arg_mapping(
                executor, requires=requires, rebind=rebind, auto_extract=auto_extract, ignore_list=ignore_list
            )
            _ARG_MAPPINGS[key] = known
        rebound, required, optional = known
        return type(rebound)(rebound), type(required)(required), type(optional)(optional)


#: Step argument mappings by class, method and the arguments that shape them.
_ARG_MAPPINGS: dict[tuple[type, str, str], tuple[Any, Any, Any]] = {}


# Steps that undo nothing still have revert boundaries a crash test can hit.
Step.revert = _with_checkpoints(Step.revert, "revert")  # type: ignore[method-assign]
