"""Turning records into the CLI's text and JSON; no I/O here."""
from __future__ import annotations

import datetime as dt

from conductor.runner import REVERT_FAILED_MARK, StepEvent
from persistence.flowlog import StepSummary
from persistence.models import FlowLogEntry, Host, Instance, Operation
from persistence.progress import PROGRESS, REQUESTS
from persistence.secrets import is_reference


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _ts(t: dt.datetime | None) -> str | None:
    return t.isoformat(sep=" ", timespec="milliseconds") if t else None


def columns_dict(obj) -> dict:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


#: Wide enough for the longest step name of the catalogue
#: (retry_migrate_disk_and_power_off), so live columns stay aligned.
STEP_COLUMN = 34


def progress_line(elapsed: float, ev: StepEvent) -> str:
    tail = f"  {ev.error}" if ev.error else ""
    return f"  [{elapsed:7.3f}s] {ev.step:<{STEP_COLUMN}} {ev.state}{tail}"


# -- hosts, flavors, images --------------------------------------------------
def host_dict(h: Host) -> dict:
    return columns_dict(h)


def hosts_table(rows: list[Host]) -> str:
    return table(["NAME", "DRIVER", "VCPUS", "RAM_MB", "DISK_GB"],
                 [[h.name + (" (down)" if h.down else ""), h.driver, f"{h.used_vcpus}/{h.vcpus}", f"{h.used_ram_mb}/{h.ram_mb}",
                   f"{h.used_disk_gb}/{h.disk_gb}"] for h in rows])


def flavors_table(rows) -> str:
    return table(["NAME", "VCPUS", "RAM_MB", "ROOT_GB", "EPHEMERAL_GB", "SWAP_MB"],
                 [[f.name, f.vcpus, f.ram_mb, f.root_gb, f.ephemeral_gb, f.swap_mb] for f in rows])


def images_table(rows) -> str:
    return table(["NAME", "FORMAT", "SIZE_MB", "PATH"],
                 [[i.name, i.disk_format, i.size_mb, i.path] for i in rows])


# -- instances ---------------------------------------------------------------
def instance_dict(i: Instance) -> dict:
    d = columns_dict(i)
    d.pop("live_marker")
    return d


def instances_table(rows: list[Instance]) -> str:
    return table(["NAME", "UUID", "HOST", "FLAVOR", "VM_STATE", "POWER", "TASK", "HELD_BY"],
                 [[i.name, i.uuid, i.host, i.flavor, i.vm_state, i.power_state, i.task_state,
                   i.held_by] for i in rows])


def instance_text(i: Instance) -> str:
    return "\n".join(f"{k:<12} {v}" for k, v in instance_dict(i).items())


# -- operations --------------------------------------------------------------
def operation_dict(op: Operation) -> dict:
    return {"id": op.id, "kind": op.kind, "instance_uuid": op.instance_uuid, "state": op.state,
            "owner": op.owner, "flow_version": op.flow_version, "error": op.error,
            "parameters": op.parameters, "created_at": _ts(op.created_at),
            "started_at": _ts(op.started_at), "finished_at": _ts(op.finished_at)}


def operations_table(rows: list[Operation]) -> str:
    return table(["ID", "KIND", "INSTANCE", "STATE", "CREATED", "ERROR"],
                 [[o.id, o.kind, o.instance_uuid, o.state, _ts(o.created_at),
                   (o.error or "")[:60]] for o in rows])


def step_dict(st: StepSummary) -> dict:
    return {"step": st.step, "state": st.state, "started_at": _ts(st.started_at),
            "ended_at": _ts(st.ended_at), "duration_s": st.duration_s, "attempts": st.attempts,
            "execute_s": st.execute_s, "revert_s": st.revert_s,
            "revert_attempts": st.revert_attempts, "error": st.error, "traceback": st.traceback}


def transition_dict(r: FlowLogEntry) -> dict:
    return {"at": _ts(r.at), "step": r.step, "state": r.state, "attempt": r.attempt,
            "result": r.result, "error": r.error}


def progress_notes(rows: list[FlowLogEntry]) -> list[FlowLogEntry]:
    """Each step's latest progress row and every request made to it."""
    notes = [r for r in rows if r.state in REQUESTS]
    latest = {r.step: r for r in rows if r.state == PROGRESS}
    return sorted(notes + list(latest.values()), key=lambda r: r.id)


#: Parameters that say where an operation acts (shown as its hosts).
HOST_KEYS = ("host", "target_host", "source_host", "dest_host", "copy_hosts")
#: Parameters recorded for the flow's own use, not asked for by anyone.
_INTERNAL_KEYS = {"operation", "instance_uuid", "name", "vifs", "prior_vm_state",
                  "prior_power_state", *HOST_KEYS}


def operation_hosts(op: Operation) -> list[str]:
    found: list[str] = []
    for key in HOST_KEYS:
        value = (op.parameters or {}).get(key)
        for h in value if isinstance(value, list) else [value]:
            if isinstance(h, str) and h and h not in found:
                found.append(h)
    return found


def shown_parameters(op: Operation) -> dict:
    """What was asked for; a secret shows as `(secret)`, never its reference."""
    def shown(v):
        if is_reference(v):
            return "(secret)"
        return v["name"] if isinstance(v, dict) and "name" in v else v  # a flavor, an image
    return {k: shown(v) for k, v in (op.parameters or {}).items()
            if k not in _INTERNAL_KEYS and v is not None}


def _span(seconds: float | None, attempts: int) -> str | None:
    if seconds is None and attempts == 0:
        return None
    text = f"{seconds * 1000:.1f}ms" if seconds is not None else "-"
    return text + (f" ({attempts} tries)" if attempts > 1 else "")


def steps_table(steps: list[StepSummary]) -> str:
    """One line per step; EXECUTE and REVERT are each phase's own time (the
    waits between attempts not counted) and its number of tries."""
    return table(["STEP", "STATE", "STARTED", "EXECUTE", "REVERT", "ERROR"],
                 [[s.step, s.state, _ts(s.started_at), _span(s.execute_s, s.attempts),
                   _span(s.revert_s, s.revert_attempts),
                   f"recovered from: {s.error}" if s.error and s.state == "SUCCESS" else s.error]
                  for s in steps])


def operation_text(op: Operation, steps: list[StepSummary], transitions: list[FlowLogEntry] | None,
                   notes: list[FlowLogEntry] = (), live: "LiveFacts | None" = None) -> str:
    head = [f"operation {op.id}", f"  kind      {op.kind}",
            f"  instance  {op.parameters.get('name') if op.parameters else None} "
            f"({op.instance_uuid})" if op.instance_uuid else "  instance  -",
            f"  state     {op.state}" + (f" ({live.situation})" if live and live.situation else "")]
    hosts_ = operation_hosts(op)
    if hosts_:
        head.append(f"  hosts     {', '.join(hosts_)}")
    params = shown_parameters(op)
    if params:
        head.append("  params    " + " ".join(f"{k}={v}" for k, v in params.items()))
    head += [f"  created   {_ts(op.created_at)}", f"  started   {_ts(op.started_at)}",
             f"  finished  {_ts(op.finished_at)}"]
    if live is not None:
        head += [f"  {line}" for line in live.lines]
    if op.error:
        head.append(f"  error     {op.error}")
    out = "\n".join(head) + "\n\n" + steps_table(steps)
    for r in notes:
        out += f"\n  {r.step} {r.state} {r.result} at {_ts(r.at)}"
    if transitions is not None:
        out += "\n\n" + table(["AT", "STEP", "STATE", "ATTEMPT", "RESULT/ERROR"],
                              [[_ts(r.at), r.step, r.state, r.attempt, r.error or r.result]
                               for r in transitions])
    return out


def outcome_text(op: Operation, inst: Instance | None, left_behind: list = ()) -> str:
    """How an operation ended; one that needs repair says what it left and
    the commands that repair it."""
    line = f"{op.kind} {op.state}" + (" and needs repair" if op.state == "FAILED" else "")
    if inst is not None:
        is_ = "is in" if inst.vm_state == "error" else "is"
        line += f": instance {inst.name} ({inst.uuid}) {is_} {inst.vm_state}"
        if inst.host:
            line += f" on {inst.host}"
        if inst.held_by == op.id:
            line += ", held by this operation"
    cause, _, revert_failure = (op.error or "").partition(REVERT_FAILED_MARK)
    if op.state == "FAILED" and revert_failure:
        if cause.rstrip("; "):
            line += f"\n  cause: {cause.rstrip('; ')}"
        line += f"\n  revert failed: {revert_failure.strip()}"
    elif op.error:
        line += f"\n  error: {op.error}"
    if left_behind:
        line += "\n  left behind (newest first):" + "".join(
            f"\n    {lb.line()}" for lb in left_behind)
    if op.state == "FAILED":
        line += (f"\n  next: fix the cause, then `computeflow ops retry-revert {op.id}`; or clean "
                 f"up by hand, then `computeflow ops mark-reverted {op.id}`")
    return line + f"\n  flow log: computeflow ops show {op.id}"


def inventory_text(leaks: dict) -> str:
    lines = [f"open claims: {len(leaks['claims'])}"]
    for host, inv in leaks["hosts"].items():
        lines.append(f"{host}: {len(inv.guests)} guests, {len(inv.disks)} disks, "
                     f"{len(inv.ports)} ports, {len(inv.base_images)} cached base images")
    return "\n".join(lines)


# -- reconcile ---------------------------------------------------------------
def reconcile_text(before, applied: list, after) -> str:
    """The audit's findings, one per line; with --apply, what each operation
    did and what is left."""
    fixable = len(before.actionable)
    head = (f"reconcile: {len(before.hosts)} host(s) probed ({', '.join(before.hosts) or 'none'}), "
            f"{before.instances} live instance(s): {len(before.findings)} finding(s), "
            f"{fixable} to fix")
    lines = [head]
    lines += [f"  skipped {h}: {why}" for h, why in sorted(before.skipped_hosts.items())]
    lines += ["  " + f.line() for f in before.findings]
    if after is None:
        if fixable:
            lines.append("dry run: nothing was changed; `computeflow reconcile --apply` fixes "
                         f"the {fixable} finding(s) marked with an action")
        return "\n".join(lines)
    lines.append(f"applied: {len(applied)} operation(s)")
    for a in applied:
        tail = f": {a.error}" if a.error else ""
        lines.append(f"  {a.operation_id} {a.state} {', '.join(a.actions)}{tail}")
    left = len(after.findings) - len(after.actionable)
    lines.append(f"after: {len(after.actionable)} finding(s) to fix, {left} left alone")
    lines += ["  " + f.line() for f in after.findings]
    return "\n".join(lines)
