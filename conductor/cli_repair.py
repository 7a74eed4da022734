"""`computeflow` commands for what went wrong: resume, cancel, terminate,
and the repair of operations whose revert failed."""

from __future__ import annotations

from conductor import cancel, reconcile, recovery, render, repair
from conductor.api import Conductor
from conductor.cli_support import (
    EXIT_NEEDS_REPAIR,
    EXIT_OK,
    EXIT_OP_FAILED,
    Progress,
    UserError,
    conductor_of,
    emit,
    exit_status,
    report_outcome,
)
from persistence import operations


def cmd_resume(args) -> int:
    if args.direction and not args.id:
        raise UserError("--direction needs an operation: `computeflow resume OP --direction ...`")
    if args.dry_run:
        with conductor_of(args) as c:
            found = recovery.plans(c, args.id)
        emit(
            args,
            [p.__dict__ | {"probes": [q.__dict__ for q in p.probes]} for p in found],
            "\n".join(p.text() for p in found) or "nothing to resume",
        )
        return EXIT_OK
    with conductor_of(args) as c, Progress(not args.json) as shown:
        if args.id:
            done = [recovery.resume_one(c, args.id, args.direction, cancel.operator(), on_event=shown)]
        else:
            done = c.resume(on_event=shown)
        running = [] if done else _running_elsewhere(c)
    emit(
        args,
        [s.__dict__ for s in done],
        "\n".join(f"{s.id} {s.kind} {s.state}" + (f": {s.error}" if s.error else "") for s in done)
        or "nothing to resume" + "".join(f"\n  {line}" for line in running),
    )
    return max((exit_status(s.state) for s in done), default=EXIT_OK)


def _running_elsewhere(c: Conductor) -> list[str]:
    """The unfinished operations a live owner runs: why a resume did nothing with them."""
    with c.db.session() as s:
        ops = operations.resumable(s)
    return [
        f"{o.id} {o.kind} {o.state}: its owner {o.owner} is alive and running it"
        for o in ops
        if recovery.owner_status(o) == "alive"
    ]


def cmd_cancel(args) -> int:
    with conductor_of(args) as c:
        res = cancel.cancel(c, args.id, cancel.operator(), wait=args.wait)
    o = res.outcome
    if res.ended:
        text = f"operation {o.op_id} ({o.kind}) {res.state}" + (f": {res.error}" if res.error else "")
    else:
        text = (
            f"cancel of operation {o.op_id} ({o.kind}) requested: its owner {o.owner} stops "
            f"it at its next step and reverts it (it is {res.state}; "
            f"see `computeflow ops show {o.op_id}`)"
        )
    expired = args.wait > 0 and not res.ended
    if expired:
        text += f"\ncomputeflow: still {res.state} after --wait {args.wait:g} s"
    emit(
        args,
        {"id": o.op_id, "kind": o.kind, "state": res.state, "error": res.error, "owner": o.owner, "ended": res.ended},
        text,
    )
    return EXIT_OP_FAILED if expired else EXIT_OK


def cmd_terminate(args) -> int:
    with conductor_of(args) as c:
        with Progress(not args.json) as shown:
            res = cancel.terminate(c, args.id, cancel.operator(), on_event=shown)
        if not args.json:
            print(
                f"operation {res.op_id} ({res.kind}) taken from {res.former_owner or 'no owner'}"
                f" and {'reverted' if res.direction == 'revert' else 'finished'} here; anything "
                "its former owner still does is refused (fenced)",
                flush=True,
            )
        return report_outcome(args, c, res.op_id)


def _repair_dict(item: repair.RepairItem) -> dict:
    return render.operation_dict(item.op) | {
        "left_behind": [
            {"step": lb.step, "state": lb.state, "error": lb.error, "resources": lb.resources}
            for lb in item.left_behind
        ]
    }


def _repair_text(item: repair.RepairItem) -> str:
    op = item.op
    lines = [f"{op.id} {op.kind} {op.state}: {op.error}"]
    lines += render.left_behind_lines(item.left_behind)
    lines.append(
        f"  fix the cause, then `computeflow ops retry-revert {op.id}`; or clean up "
        f"by hand and `computeflow ops mark-reverted {op.id}`"
    )
    return "\n".join(lines)


def cmd_ops_needs_repair(args) -> int:
    with conductor_of(args) as c:
        items = repair.needing_repair(c, args.limit)
    emit(
        args, [_repair_dict(i) for i in items], "\n".join(_repair_text(i) for i in items) or "no operation needs repair"
    )
    return EXIT_OK


def cmd_ops_retry_revert(args) -> int:
    quiet = getattr(args, "json", False)
    with conductor_of(args) as c:
        with Progress(not quiet) as shown:
            status = repair.retry_revert(c, args.id, cancel.operator(), on_event=shown)
        with c.db.session() as s:
            op = operations.get(s, status.id)
            item = repair.RepairItem(op, repair.left_behind(s, op) if op.state == operations.FAILED else [])
    emit(
        args,
        _repair_dict(item),
        _repair_text(item)
        if op.state == operations.FAILED
        else f"operation {op.id} ({op.kind}) {op.state}: {op.error}",
    )
    if op.state == operations.FAILED:
        return EXIT_NEEDS_REPAIR
    return EXIT_OK if op.state == operations.REVERTED else EXIT_OP_FAILED


def cmd_ops_mark_reverted(args) -> int:
    with conductor_of(args) as c:
        item = repair.mark_reverted(c, args.id, cancel.operator(), args.note)
        # What the hosts still hold of the instance, after the hand cleanup.
        still = [
            f for f in reconcile.audit(c).findings if item.op.instance_uuid and f.instance_uuid == item.op.instance_uuid
        ]
    text = f"operation {item.op.id} ({item.op.kind}) marked REVERTED: {item.op.error}"
    if item.left_behind:
        text += "\n  the flow log said these were left behind:\n" + "\n".join(
            f"    {lb.line()}" for lb in item.left_behind
        )
    if still:
        text += (
            "\n  the hosts and the database still disagree about the instance "
            "(`computeflow reconcile --apply` fixes those with an action):\n"
            + "\n".join(f"    {f.line()}" for f in still)
        )
    else:
        text += "\n  the hosts agree with the database about the instance: nothing is left"
    emit(args, _repair_dict(item) | {"still_disagree": [f.__dict__ for f in still]}, text)
    return EXIT_OK
