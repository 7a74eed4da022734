"""What every `computeflow` command shares: exit statuses, opening the
conductor or the database, printing text or JSON, live progress and the
report of an ended operation."""

from __future__ import annotations

import json
import sys
import time

from computeflow.errors import ComputeflowError
from conductor import config, render, repair
from conductor.api import Conductor
from conductor.handle import OperationHandle
from conductor.runner import StepEvent
from persistence import instances, operations, progress, schema
from persistence.models import FLOW_STEP
from persistence.session import Database


EXIT_OK, EXIT_OP_FAILED, EXIT_USER_ERROR = 0, 1, 2
#: The operation's revert failed: the instance is held in `error` until an operator repairs it.
EXIT_NEEDS_REPAIR = 3


class UserError(ComputeflowError):
    """A request that cannot be right: one line on stderr, exit status 2."""


def conductor_of(args) -> Conductor:
    return Conductor(args.conf)


def database_of(args) -> Database:
    """For read commands: the database, upgraded if embedded, no runtime."""
    db = config.open_database(args.conf)
    schema.ensure_current(db, auto_upgrade=args.conf.conductor.auto_upgrade and db.dialect == "sqlite")
    return db


def warn_idle_faults(args, kind: str) -> None:
    """Armed faults that cannot fire in this operation are likelier a mistake than intended."""
    warning = config.idle_faults_warning(args.conf, kind)
    if warning:
        print(f"computeflow: warning: {warning}", file=sys.stderr, flush=True)


def emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if getattr(args, "json", False) else text)


class Progress:
    """Prints each persisted step transition as it happens.

    Only steps: the flow's own state changes (step `(flow)` in the flow log:
    RESUMING, SUSPENDED, ...) are bookkeeping an operator cannot act on, and
    the outcome line says how the flow ended."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()

    def __call__(self, ev: StepEvent) -> None:
        if self.enabled and ev.step != FLOW_STEP:
            print(render.progress_line(time.monotonic() - self.t0, ev), flush=True)

    def on_progress(self, op_id: str, step: str, state: str, text: str) -> None:
        """A long step's progress (persistence/progress.py), e.g. a live migration's,
        or a step's retry: RETRYING with the error, then RUNNING with the attempt."""
        self(StepEvent(op_id, step, f"{state} {text}".rstrip()))

    def __enter__(self) -> Progress:
        """While in the block, progress rows and retries of this process are shown too."""
        progress.add_listener(self.on_progress)
        return self

    def __exit__(self, *exc) -> None:
        progress.remove_listener(self.on_progress)


def run_and_report(args, c: Conductor, op_id: str) -> int:
    quiet = getattr(args, "json", False)
    if not quiet:
        print(f"operation {op_id}", flush=True)
    if c.conf.conductor.jobboard:  # a conductor service runs it
        return wait_and_report(args, c, op_id)
    with Progress(not quiet) as shown:
        c.run(op_id, on_event=shown)
    return report_outcome(args, c, op_id)


def report_outcome(args, c: Conductor, op_id: str) -> int:
    """The ended operation in one paragraph; its exit status (0, 1, or 3: needs repair)."""
    with c.db.session() as s:
        op = operations.get(s, op_id)
        inst = instances.get(s, op.instance_uuid) if op.instance_uuid else None
        left = repair.left_behind(s, op) if op.state == operations.FAILED else []
    emit(args, render.operation_dict(op), render.outcome_text(op, inst, left))
    return exit_status(op.state)


def exit_status(state: str) -> int:
    return {operations.SUCCEEDED: EXIT_OK, operations.FAILED: EXIT_NEEDS_REPAIR}.get(state, EXIT_OP_FAILED)


def read_secret_file(path: str, what: str, one_line: bool = False) -> str:
    """A secret from a file or '-' (stdin), never from argv. A password is its
    file's first line; file contents are taken whole."""
    try:
        if path == "-":
            value = sys.stdin.readline() if one_line else sys.stdin.read()
        else:
            with open(path) as f:
                value = f.readline() if one_line else f.read()
    except OSError as e:
        raise UserError(f"cannot read the {what} file: {e.strerror}") from None
    if one_line:
        value = value.rstrip("\n")
    if not value:
        raise UserError(f"the {what} file is empty")
    return value


def wait_and_report(args, c: Conductor, op_id: str) -> int:
    """Scale-out: the operation is on the jobboard; wait for a conductor to end it."""
    if not getattr(args, "json", False):
        print(f"queued on {c.conf.conductor.jobboard}; waiting for a conductor", flush=True)
    OperationHandle(op_id, c).wait()
    return report_outcome(args, c, op_id)
