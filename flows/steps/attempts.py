"""How one step's work runs: under a deadline, and retried with exponential
backoff when the driver says the error is transient.

Deadline. The work runs in the step's own thread; its deadline is an entry
of one watchdog thread for the whole process (flows/watchdog.py), and a
takeover of the operation (`terminate`) a callback of the lease keeper, so a
waiting step costs one thread and no wake-ups. A Python thread cannot be
killed: at the deadline the step fails with `StepTimedOut` (taskflow then
reverts) and the call is *abandoned* (flows/step_pool.py): it keeps running
in its thread, which leaves the step pool, until it returns by itself or the
process exits. A step run outside a StepPool (a test's own engine) waits for
a call thread instead, woken by the same watchdog. The abandoned call may
still complete its side effect after the step was declared
failed, so the revert of that same step first waits for the abandoned call
(up to the revert's own deadline): the revert never races its execute. If the
call is still running then, the revert fails too and the operation is left
FAILED for an operator (`computeflow ops retry-revert` once the hypervisor is
healthy, from this process after it recovered or from any other process,
where the abandoned call does not exist). Every revert is idempotent and
finds its resource from the instance, host and operation, never from
`result`, so undoing a side effect that completed late, or never happened,
is the same call.

Retries. An error whose `transient` attribute is true (drivers.errors.
TransientError) is retried up to `step_retry_attempts` times, sleeping
base * 2**(n-1) seconds (capped at `step_retry_max_delay`) in between; any
other error (and a timeout: the abandoned call may still be running) fails
the step at once. Each retry is two flow-log rows (RETRYING with the error,
then RUNNING with the next attempt number), written only while this process
still owns the operation. A cancel request wakes a step sleeping between
retries.

Database outages. A step that writes to the database itself (a hold, a
claim, a record) and finds the server gone (persistence.session.
connection_lost: a restart or failover, not a bad statement) is tried again,
every step being idempotent, for up to `database_outage_tolerance` seconds
from the first such failure: a PostgreSQL restart takes a few seconds, which
the driver-error retries (three attempts, ~3 s) would not outlast, and
reverting a healthy operation because the database blinked is a surprise.
The retry rows are written when the database answers again; if it does not,
they are skipped (a warning in the log) and fencing still applies at the
step's next state write.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass

from taskflow import task

from flows import runtime, step_pool
from flows.elastic_pool import ElasticThreadPool
from flows.errors import OperationError
from flows.steps import cancellation
from flows.watchdog import Watchdog
from persistence import operations, progress
from persistence.session import connection_lost

LOG = logging.getLogger(__name__)


# Delay between two attempts during a database outage: short at first (a
# dropped pooled connection is fixed by the next checkout), then capped.
_OUTAGE_FIRST_DELAY = 0.25
_OUTAGE_MAX_DELAY = 2.0


class StepTimedOut(OperationError):
    def __init__(self, step: str, phase: str, seconds: float, detail: str = "") -> None:
        super().__init__(f"step {step} did not finish its {phase} within {seconds:g}s{detail}")
        self.step = step
        self.phase = phase
        self.seconds = seconds


@dataclass(frozen=True)
class Policy:
    timeout: float  # 0: no deadline
    attempts: int
    base_delay: float
    max_delay: float
    outage_tolerance: float

    @classmethod
    def of(cls, step: task.Task) -> Policy:
        c = runtime.current().conf.conductor
        own = getattr(step, "step_timeout", None)
        return cls(
            c.step_timeout if own is None else own,
            c.step_retry_attempts,
            c.step_retry_base_delay,
            c.step_retry_max_delay,
            c.database_outage_tolerance,
        )

    def delay(self, failed_attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2.0 ** (failed_attempt - 1))


def run(step: task.Task, phase: str, op_id: str | None, work: Callable[[], object]) -> object:
    """Run one execute or revert of `step`: cancel check, deadline, retries."""
    stand_in = step_pool.standing_in()
    if stand_in is not None:  # the step was given up on (flows/step_pool.py): report that
        raise stand_in
    run_ = cancellation.get(op_id)
    if phase == "execute":
        _check_cancel(run_, op_id)
    policy = Policy.of(step)
    if phase == "revert":
        _await_abandoned_execute(step, policy.timeout)
    attempt = 1  # every attempt, as the flow log numbers them
    transient_failures = outage_failures = 0
    outage_ends: float | None = None  # deadline of the database outage being ridden out
    while True:
        try:
            return _call(step, phase, work, policy.timeout, op_id)
        except Exception as e:
            if connection_lost(e):
                outage_failures += 1
                now = time.monotonic()
                outage_ends = outage_ends if outage_ends is not None else now + policy.outage_tolerance
                if now >= outage_ends:
                    raise
                delay = min(_OUTAGE_MAX_DELAY, _OUTAGE_FIRST_DELAY * 2 ** (outage_failures - 1), outage_ends - now)
                note = f"database unreachable; attempt {attempt + 1} in {delay:.3g}s"
                # The driver's message only: SQLAlchemy's text adds the statement and its parameters.
                error = f"{type(e).__name__}: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}"
                trace = "".join(tb.format_tb(e.__traceback__)) + error
            elif getattr(e, "transient", False) and transient_failures + 1 < policy.attempts:
                transient_failures += 1
                delay = policy.delay(transient_failures)
                note = f"transient; attempt {transient_failures + 1} of {policy.attempts} in {delay:.3g}s"
                error = f"{type(e).__name__}: {e}"
                trace = "".join(tb.format_exception(e))
            else:
                raise
            LOG.warning("step %s %s attempt %d failed (%s): %s", step.name, phase, attempt, note, error)
            if not _log(run_, step.name, "RETRYING", error=error, traceback=trace, result=note):
                raise  # taken over: the new owner runs the step; stop calling the driver
            if run_ is not None:
                run_.wake.wait(delay)
            else:
                time.sleep(delay)
            if phase == "execute":
                _check_cancel(run_, op_id)
            attempt += 1
            if not _log(run_, step.name, "RUNNING", note=f"attempt {attempt}"):
                raise


#: Every step deadline of the process: one thread, not one per waiting step.
_DEADLINES = Watchdog("step-deadlines")

#: Threads for calls under a deadline made outside a StepPool (a test's own
#: engine, a serial engine): the call runs on one of these and the step
#: waits for it. Daemon threads, because a hung call must never keep the
#: process from exiting; no useful cap (an abandoned call holds its thread
#: until it returns by itself). Steps run by a conductor never use them.
_CALLS = ElasticThreadPool(2**31 - 1, name="step-call")


def configure_call_threads(idle_seconds: float) -> None:
    """How long an idle call thread, or the idle deadline thread, lives
    ([conductor] idle_thread_seconds)."""
    _CALLS.idle_seconds = idle_seconds
    _DEADLINES.idle_seconds = idle_seconds


def _named(name: str, fn: Callable[[], None]) -> Callable[[], None]:
    """fn, run under the thread name `name` (the step and phase), which the
    timeout error names."""

    def call() -> None:
        me = threading.current_thread()
        idle_name, me.name = me.name, name
        try:
            fn()
        finally:
            me.name = idle_name

    return call


def _check_cancel(run_: cancellation.Run | None, op_id: str | None) -> None:
    """Raise Cancelled if asked, unless the flow is past its point of no
    return (read from the database only when a cancel is pending)."""
    try:
        cancellation.check(op_id)
    except cancellation.Cancelled:
        if run_ is None or op_id is None:  # a cancel needs a run: not reached
            raise
        with runtime.current().db.session() as s:
            if not operations.forward_phase_started(s, op_id, run_.no_return_step):
                raise
        run_.past_no_return = True
        LOG.warning("operation %s: cancel by %s ignored: its forward-only phase has started", op_id, run_.cancelled_by)


class _Abandoned(Exception):
    """Raised in a thread whose call returned after its step was failed for it
    (deadline or takeover); the engine never sees it."""


def _call(step: task.Task, phase: str, work: Callable[[], object], timeout: float, op_id: str | None = None) -> object:
    if not timeout:
        return work()
    slot = step_pool.current()
    if slot is None:
        return _call_on_own_thread(step, phase, work, timeout, op_id)
    run_ = cancellation.get(op_id)
    thread_name = f"{step.name}-{phase}"

    def give_up(error: BaseException, why: str) -> None:
        if not slot.abandon(error):
            return  # the call returned first
        if phase == "execute":
            step._abandoned_execute = slot.call_returned  # its revert waits for it
        LOG.error(
            "step %s %s: %s; the call is abandoned (still running in thread %s)", step.name, phase, why, thread_name
        )
        slot.report(error)

    def deadline_passed() -> None:
        give_up(StepTimedOut(step.name, phase, timeout), f"exceeded {timeout:g}s")

    def taken_over() -> None:
        assert run_ is not None
        give_up(cancellation.TakenOver(run_.op_id, step.name), f"operation {run_.op_id} taken over")

    slot.enter_call()
    forget = _unless_lost(run_, taken_over, step.name, slot.leave_call)
    deadline = _DEADLINES.add(time.monotonic() + timeout, deadline_passed)
    me = threading.current_thread()
    idle_name, me.name = me.name, thread_name
    try:
        result = work()
    finally:
        abandoned = slot.leave_call()
        deadline.cancel()
        forget()
        me.name = idle_name
    if abandoned is not None:
        raise _Abandoned(f"step {step.name} {phase} returned after it was given up: {abandoned}")
    return result


def _unless_lost(
    run_: cancellation.Run | None, callback: Callable[[], None], step: str, undo: Callable[[], object] = lambda: None
) -> Callable[[], None]:
    """Register `callback` for a takeover of the operation during the call;
    the function that unregisters it. TakenOver (after `undo()`) if it was
    taken already: the call is not made."""
    if run_ is None:
        return lambda: None
    forget = run_.when_lost(callback)
    if forget is None:
        undo()
        raise cancellation.TakenOver(run_.op_id, step)
    return forget


def _call_on_own_thread(
    step: task.Task, phase: str, work: Callable[[], object], timeout: float, op_id: str | None
) -> object:
    """`work` on a call thread, waited for until it returns, its deadline
    passes or the operation is taken over (no polling: each of them wakes
    the step)."""
    box: dict[str, object] = {}
    returned = threading.Event()
    wake = threading.Event()

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting step
            box["error"] = e
        finally:
            returned.set()
            wake.set()

    thread_name = f"{step.name}-{phase}"
    run_ = cancellation.get(op_id)
    forget = _unless_lost(run_, wake.set, step.name)
    _CALLS.submit(_named(thread_name, target))
    deadline = _DEADLINES.add(time.monotonic() + timeout, wake.set)
    try:
        wake.wait()
    finally:
        deadline.cancel()
        forget()
    if not returned.is_set():
        if run_ is not None and run_.lost:
            LOG.error("operation %s taken over while step %s ran; its call is abandoned", run_.op_id, step.name)
            raise cancellation.TakenOver(run_.op_id, step.name)
        if phase == "execute":
            step._abandoned_execute = returned  # its revert waits for it
        LOG.error(
            "step %s %s exceeded %gs; the call is abandoned (still running in thread %s)",
            step.name,
            phase,
            timeout,
            thread_name,
        )
        raise StepTimedOut(step.name, phase, timeout)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def _await_abandoned_execute(step: task.Task, timeout: float) -> None:
    """Never revert while the step's own timed-out execute may still act."""
    done: threading.Event | None = getattr(step, "_abandoned_execute", None)
    if done is None:
        return
    if not done.wait(timeout or None):
        raise StepTimedOut(
            step.name,
            "revert",
            timeout,
            ": its execute, abandoned after a timeout, is still running in this process; reverting now could race it",
        )
    step._abandoned_execute = None


def _log(run_: cancellation.Run | None, step: str, state: str, note: str = "", **row: str | None) -> bool:
    """A retry row in the flow log; False if this process no longer owns the operation.

    With the database unreachable the row is skipped (True): ownership is
    checked again, fenced, by the step's next state write.
    """
    if run_ is None:
        return True  # run outside a conductor (a test's engine): nothing to fence or log
    try:
        with runtime.current().db.session() as s:
            logged = operations.log_attempt(s, run_.op_id, run_.owner, run_.epoch, step, state, **row)
        if logged:  # live output shows retries, as the flow log does
            text = f"{row.get('error')} ({row.get('result')})" if state == "RETRYING" else note
            progress.notify(run_.op_id, step, text, state)
        return logged
    except Exception as e:
        if not connection_lost(e):
            raise
        LOG.warning("operation %s: %s row of step %s not logged, database unreachable: %s", run_.op_id, state, step, e)
        return True
