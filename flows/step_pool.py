"""The pool taskflow runs steps on, where a step may be given up on while its
call goes on.

A step's driver call runs in the step's own thread: a waiting spawn holds
that thread, and no second one that only waits for it (a thousand spawns in
their network wait were three thousand threads, and the waiting ones woke
every second to look for a takeover). The deadline is an entry of one
watchdog (flows/watchdog.py) and a takeover a callback
(flows/steps/cancellation.py); either *abandons* the step's slot:

- the engine hears at once that the step failed, with the deadline's or the
  takeover's error: the step's own task function is called again, on the
  abandoning thread, as a *stand-in* that raises that error at its first
  line (flows/steps/attempts.py), so taskflow builds the failure the way it
  builds any other, and the stand-in's result settles the step's future;
- the thread still in the call leaves the pool (it no longer counts against
  `[conductor] workers`; a queued step gets a thread meanwhile) and ends when
  the call returns by itself; what the call returns then goes nowhere.

A Python thread cannot be interrupted inside a call, so abandoning is all a
deadline can do; flows/steps/attempts.py says how a revert never races the
abandoned call.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

from flows.elastic_pool import ElasticThreadPool

_local = threading.local()


def current() -> Slot | None:
    """The step task this thread runs for a StepPool (None elsewhere)."""
    slot: Slot | None = getattr(_local, "slot", None)
    return slot


def standing_in() -> BaseException | None:
    """The error a stand-in running on this thread must fail its step with."""
    error: BaseException | None = getattr(_local, "stand_in", None)
    return error


def _settle(fut: futures.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Settle `fut` unless it is settled already (a stand-in came first)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except futures.InvalidStateError:
        pass


class Slot:
    """One step task on one pool thread, and its driver call in progress."""

    def __init__(
        self,
        pool: StepPool,
        fut: futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._pool, self._fut, self._fn, self._args, self._kwargs = pool, fut, fn, args, kwargs
        # The task's context variables (the active runtime), for a stand-in
        # run from another thread: a copy, as the original is entered here.
        self._context = contextvars.copy_context()
        self.thread = threading.current_thread()
        self._lock = threading.Lock()
        self._in_call = False
        #: The error the step failed with when the call was abandoned.
        self.abandoned: BaseException | None = None
        #: Set when the current (or last) call returned, abandoned or not.
        self.call_returned = threading.Event()

    def enter_call(self) -> None:
        with self._lock:
            self._in_call = True
            self.call_returned = threading.Event()

    def leave_call(self) -> BaseException | None:
        """The call returned: None if its outcome counts, else the error its
        step already failed with (the outcome goes nowhere)."""
        with self._lock:
            self._in_call = False
            self.call_returned.set()
            return self.abandoned

    def abandon(self, error: BaseException) -> bool:
        """Give up on the call in progress; False if it already returned (or
        was abandoned). Then `report(error)` tells the engine."""
        with self._lock:
            if not self._in_call or self.abandoned is not None:
                return False
            self.abandoned = error
        self._pool._detach(self.thread)
        return True

    def report(self, error: BaseException) -> None:
        """Fail the step now: run its task function as a stand-in that raises
        `error`, and settle the step's future with what it returns."""
        kwargs = dict(self._kwargs)
        if "progress_callback" in kwargs:
            # taskflow registers this callback for the task's duration; the
            # abandoned thread still holds that registration.
            kwargs["progress_callback"] = None
        _local.stand_in = error
        try:
            result = self._context.run(self._fn, *self._args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the engine, as the pool does
            _settle(self._fut, error=e)
        else:
            _settle(self._fut, result)
        finally:
            _local.stand_in = None


class StepPool(ElasticThreadPool):
    """An ElasticThreadPool whose tasks may be abandoned (see the module)."""

    def _run(
        self, fut: futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        _local.slot = Slot(self, fut, fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, as ThreadPoolExecutor does
            _settle(fut, error=e)
        else:
            _settle(fut, result)
        finally:
            _local.slot = None
