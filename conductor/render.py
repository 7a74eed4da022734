"""Turning records into the CLI's text and JSON; no I/O here."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from computeflow.states import VmState
from conductor.runner import REVERT_FAILED_MARK, StepEvent
from persistence.flowlog import StepSummary
from persistence.models import FlowLogEntry, Host, Instance, InstanceEvent, Operation
from persistence.operations import FAILED, HOST_LIST_PARAMS, HOST_PARAMS
from persistence.progress import PROGRESS, REQUESTS
from persistence.secrets import is_reference

if TYPE_CHECKING:
    from conductor.liveness import LiveFacts


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _ts(t: dt.datetime | None) -> str | None:
    return t.isoformat(sep=" ", timespec="milliseconds") if t else None


def fmt_time(t: dt.datetime | None) -> str | None:
    """A stored time for an operator: UTC to the second, marked Z
    (`2026-12-04 05:43:03Z`). Stored times are naive UTC; an aware one is
    converted. The one convention for every list and show."""
    t = _utc(t)
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else None


def fmt_time_ms(t: dt.datetime | None) -> str | None:
    """fmt_time to the millisecond, for step times (steps take milliseconds)."""
    t = _utc(t)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z" if t else None


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    """Stored times are naive UTC; an aware one is converted."""
    return t.astimezone(dt.UTC) if t is not None and t.tzinfo is not None else t


def fmt_duration(seconds: float | None) -> str | None:
    """`0.42s`, `12.3s`, `4m05s`, `2h03m`: short enough for a table column."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


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
    return table(
        ["NAME", "DRIVER", "VCPUS", "RAM_MB", "DISK_GB"],
        [
            [
                h.name + (" (down)" if h.down else ""),
                h.driver,
                f"{h.used_vcpus}/{h.vcpus}",
                f"{h.used_ram_mb}/{h.ram_mb}",
                f"{h.used_disk_gb}/{h.disk_gb}",
            ]
            for h in rows
        ],
    )


def flavors_table(rows) -> str:
    return table(
        ["NAME", "VCPUS", "RAM_MB", "ROOT_GB", "EPHEMERAL_GB", "SWAP_MB"],
        [[f.name, f.vcpus, f.ram_mb, f.root_gb, f.ephemeral_gb, f.swap_mb] for f in rows],
    )


def images_table(rows) -> str:
    return table(["NAME", "FORMAT", "SIZE_MB", "PATH"], [[i.name, i.disk_format, i.size_mb, i.path] for i in rows])


# -- instances ---------------------------------------------------------------
def instance_dict(i: Instance) -> dict:
    d = columns_dict(i)
    d.pop("live_marker")
    return d


def instances_table(rows: list[Instance], down_hosts: set[str] = frozenset()) -> str:
    """A host marked down shows as `h1 (down)` (as in `hosts list`): its
    instances' POWER is the last state known, not a current one."""
    return table(
        ["NAME", "UUID", "HOST", "FLAVOR", "VM_STATE", "POWER", "TASK", "HELD_BY"],
        [
            [i.name, i.uuid, _host(i, down_hosts), i.flavor, i.vm_state, i.power_state, i.task_state, i.held_by]
            for i in rows
        ],
    )


def _host(i: Instance, down_hosts: set[str]) -> str | None:
    return f"{i.host} (down)" if i.host in down_hosts else i.host


def _last_op_dict(op: Operation | None) -> dict | None:
    return {"id": op.id, "kind": op.kind, "state": op.state} if op else None


def _fault(op: Operation | None) -> str | None:
    """Why the instance may be broken: the error of its last operation, if that FAILED."""
    return op.error if op is not None and op.state == FAILED else None


def instance_show_dict(i: Instance, last_op: Operation | None, host_down: bool) -> dict:
    return instance_dict(i) | {
        "host_down": host_down,
        "last_operation": _last_op_dict(last_op),
        "fault": _fault(last_op),
    }


def _field(key: str, values: list[str]) -> list[str]:
    """One value per line, continuation lines aligned under the first."""
    return [f"{key if n == 0 else '':<16}{v}" for n, v in enumerate(values or ["(none)"])]


def instance_text(i: Instance, last_op: Operation | None, host_down: bool) -> str:
    power = i.power_state + (f" (last known: host {i.host} is down)" if host_down else "")
    lines = [
        f"{k:<16}{'-' if v is None else v}"
        for k, v in (
            ("uuid", i.uuid),
            ("name", i.name),
            ("host", _host(i, {i.host} if host_down else set())),
            ("flavor", i.flavor),
            ("image", i.image),
            ("vm_state", i.vm_state),
            ("power_state", power),
            ("task_state", i.task_state),
            ("held_by", i.held_by),
            ("last_op", last_op and f"{last_op.id} {last_op.kind} {last_op.state}"),
        )
    ]
    if _fault(last_op):
        lines.append(f"{'fault':<16}{_fault(last_op)}")
    lines += _field("vifs", [f"{v.get('id')}  {v.get('mac')}  {v.get('network')}" for v in i.vifs or []])
    lines += _field("volumes", [f"{v.get('volume_id')}  {v.get('mountpoint')}" for v in i.volumes or []])
    for key, meta in (("user_metadata", i.user_metadata), ("system_metadata", i.system_metadata)):
        lines += _field(key, [f"{k}={v}" for k, v in sorted((meta or {}).items())])
    lines += [f"{'created_at':<16}{fmt_time(i.created_at)}", f"{'updated_at':<16}{fmt_time(i.updated_at)}"]
    return "\n".join(lines)


def iso_time(t: dt.datetime | None) -> str | None:
    """A stored (naive UTC) time for JSON: ISO-8601 with Z."""
    return t.isoformat() + "Z" if t else None


def event_dict(e: InstanceEvent) -> dict:
    return {"at": iso_time(e.at), "host": e.host, "event": e.event, "power_state": e.power_state}


def events_table(rows: list[InstanceEvent]) -> str:
    return table(
        ["AT", "HOST", "EVENT", "POWER_STATE"], [[fmt_time(e.at), e.host, e.event, e.power_state] for e in rows]
    )


# -- operations --------------------------------------------------------------
def operation_dict(op: Operation) -> dict:
    return {
        "id": op.id,
        "kind": op.kind,
        "instance_uuid": op.instance_uuid,
        "state": op.state,
        "owner": op.owner,
        "flow_version": op.flow_version,
        "error": op.error,
        "parameters": op.parameters,
        "created_at": _ts(op.created_at),
        "started_at": _ts(op.started_at),
        "finished_at": _ts(op.finished_at),
    }


def op_duration_s(op: Operation, now: dt.datetime) -> float | None:
    """Finished minus started; for an operation still going, its time so far."""
    if op.started_at is None:
        return None
    return round(((op.finished_at or now) - op.started_at).total_seconds(), 3)


def history_dict(op: Operation, instance_name: str | None, now: dt.datetime, waiting_for: str | None = None) -> dict:
    """`waiting_for`: the host slots it waits for (conductor/host_limits.py), if any."""
    return operation_dict(op) | {
        "instance_name": instance_name,
        "duration_s": op_duration_s(op, now),
        "waiting_for": waiting_for,
    }


def history_table(
    rows: list[tuple[Operation, str | None]], now: dt.datetime, waiting: dict[str, str] | None = None
) -> str:
    """`ops list`: instance names, UTC times, and how long each took (or has
    been running: `(running)`); an operation waiting in line for a host slot
    says so after its state."""
    waiting = waiting or {}

    def state(op: Operation) -> str:
        return f"{op.state} ({waiting[op.id]})" if op.id in waiting else op.state

    def duration(op: Operation) -> str | None:
        text = fmt_duration(op_duration_s(op, now))
        return f"{text} (running)" if text and op.finished_at is None else text

    return table(
        ["ID", "KIND", "INSTANCE", "STATE", "CREATED", "DURATION", "ERROR"],
        [
            [o.id, o.kind, name or o.instance_uuid, state(o), fmt_time(o.created_at), duration(o), (o.error or "")[:60]]
            for o, name in rows
        ],
    )


def step_dict(st: StepSummary) -> dict:
    return {
        "step": st.step,
        "state": st.state,
        "started_at": _ts(st.started_at),
        "ended_at": _ts(st.ended_at),
        "duration_s": st.duration_s,
        "attempts": st.attempts,
        "execute_s": st.execute_s,
        "revert_s": st.revert_s,
        "revert_attempts": st.revert_attempts,
        "error": st.error,
        "traceback": st.traceback,
    }


def transition_dict(r: FlowLogEntry) -> dict:
    return {
        "at": _ts(r.at),
        "step": r.step,
        "state": r.state,
        "attempt": r.attempt,
        "result": r.result,
        "error": r.error,
    }


def operation_show_dict(
    op: Operation, rows: list[FlowLogEntry], steps: list[StepSummary], live: LiveFacts, with_transitions: bool = True
) -> dict:
    """`ops show --json` (the web API's operation too): the operation, who runs
    it, its steps, progress notes and, if asked, every transition."""
    return operation_dict(op) | {
        "hosts": operation_hosts(op),
        "live": live.to_dict(),
        "cancel_requested_by": op.cancel_requested_by,
        "lease_expires_at": _ts(op.lease_expires_at),
        "steps": [step_dict(st) for st in steps],
        "transitions": [transition_dict(r) for r in rows] if with_transitions else None,
        "progress": [transition_dict(r) for r in progress_notes(rows)],
    }


def progress_notes(rows: list[FlowLogEntry]) -> list[FlowLogEntry]:
    """Each step's latest progress row and every request made to it."""
    notes = [r for r in rows if r.state in REQUESTS]
    latest = {r.step: r for r in rows if r.state == PROGRESS}
    return sorted(notes + list(latest.values()), key=lambda r: r.id)


#: Parameters that say where an operation acts (shown as its hosts).
HOST_KEYS = HOST_PARAMS + HOST_LIST_PARAMS
#: Parameters recorded for the flow's own use, not asked for by anyone.
_INTERNAL_KEYS = {"operation", "instance_uuid", "name", "vifs", "prior_vm_state", "prior_power_state", *HOST_KEYS}


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

    return {k: shown(v) for k, v in (op.parameters or {}).items() if k not in _INTERNAL_KEYS and v is not None}


def _span(seconds: float | None, attempts: int) -> str | None:
    if seconds is None and attempts == 0:
        return None
    text = f"{seconds * 1000:.1f}ms" if seconds is not None else "-"
    return text + (f" ({attempts} tries)" if attempts > 1 else "")


def steps_table(steps: list[StepSummary]) -> str:
    """One line per step; EXECUTE and REVERT are each phase's own time (the
    waits between attempts not counted) and its number of tries."""
    return table(
        ["STEP", "STATE", "STARTED", "EXECUTE", "REVERT", "ERROR"],
        [
            [
                s.step,
                s.state,
                fmt_time_ms(s.started_at),
                _span(s.execute_s, s.attempts),
                _span(s.revert_s, s.revert_attempts),
                f"recovered from: {s.error}" if s.error and s.state == "SUCCESS" else s.error,
            ]
            for s in steps
        ],
    )


def operation_text(
    op: Operation,
    steps: list[StepSummary],
    transitions: list[FlowLogEntry] | None,
    notes: list[FlowLogEntry] = (),
    live: LiveFacts | None = None,
) -> str:
    head = [
        f"operation {op.id}",
        f"  kind      {op.kind}",
        f"  instance  {op.parameters.get('name') if op.parameters else None} ({op.instance_uuid})"
        if op.instance_uuid
        else "  instance  -",
        f"  state     {op.state}" + (f" ({live.situation})" if live and live.situation else ""),
    ]
    hosts_ = operation_hosts(op)
    if hosts_:
        head.append(f"  hosts     {', '.join(hosts_)}")
    params = shown_parameters(op)
    if params:
        head.append("  params    " + " ".join(f"{k}={v}" for k, v in params.items()))
    head += [
        f"  created   {fmt_time_ms(op.created_at)}",
        f"  started   {fmt_time_ms(op.started_at)}",
        f"  finished  {fmt_time_ms(op.finished_at)}",
    ]
    if live is not None:
        head += [f"  {line}" for line in live.lines]
    if op.error:
        head.append(f"  error     {op.error}")
    out = "\n".join(head) + "\n\n" + steps_table(steps)
    for r in notes:
        out += f"\n  {r.step} {r.state} {r.result} at {fmt_time_ms(r.at)}"
    if transitions is not None:
        out += "\n\n" + table(
            ["AT", "STEP", "STATE", "ATTEMPT", "RESULT/ERROR"],
            [[fmt_time_ms(r.at), r.step, r.state, r.attempt, r.error or r.result] for r in transitions],
        )
    return out


def left_behind_lines(left_behind: list) -> list[str]:
    """What a FAILED operation left (repair.LeftBehind), newest first; none: no lines."""
    if not left_behind:
        return []
    return ["  left behind (newest first):"] + [f"    {lb.line()}" for lb in left_behind]


def outcome_text(op: Operation, inst: Instance | None, left_behind: list = ()) -> str:
    """How an operation ended; one that needs repair says what it left and
    the commands that repair it."""
    line = f"{op.kind} {op.state}" + (" and needs repair" if op.state == "FAILED" else "")
    if inst is not None:
        is_ = "is in" if inst.vm_state == VmState.ERROR else "is"
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
    line += "".join(f"\n{text}" for text in left_behind_lines(left_behind))
    if op.state == "FAILED":
        line += (
            f"\n  next: fix the cause, then `computeflow ops retry-revert {op.id}`; or clean "
            f"up by hand, then `computeflow ops mark-reverted {op.id}`"
        )
    return line + f"\n  flow log: computeflow ops show {op.id}"


def inventory_text(leaks: dict) -> str:
    lines = [f"open claims: {len(leaks['claims'])}"]
    for host, inv in leaks["hosts"].items():
        lines.append(
            f"{host}: {len(inv.guests)} guests, {len(inv.disks)} disks, "
            f"{len(inv.ports)} ports, {len(inv.base_images)} cached base images"
        )
    return "\n".join(lines)


# -- reconcile ---------------------------------------------------------------
def reconcile_text(before, applied: list, after) -> str:
    """The audit's findings, one per line; with --apply, what each operation
    did and what is left."""
    fixable = len(before.actionable)
    head = (
        f"reconcile: {len(before.hosts)} host(s) probed ({', '.join(before.hosts) or 'none'}), "
        f"{before.instances} live instance(s): {len(before.findings)} finding(s), "
        f"{fixable} to fix"
    )
    lines = [head]
    lines += [f"  skipped {h}: {why}" for h, why in sorted(before.skipped_hosts.items())]
    lines += ["  " + f.line() for f in before.findings]
    if after is None:
        if fixable:
            lines.append(
                "dry run: nothing was changed; `computeflow reconcile --apply` fixes "
                f"the {fixable} finding(s) marked with an action"
            )
        return "\n".join(lines)
    lines.append(f"applied: {len(applied)} operation(s)")
    for a in applied:
        tail = f": {a.error}" if a.error else ""
        lines.append(f"  {a.operation_id} {a.state} {', '.join(a.actions)}{tail}")
    left = len(after.findings) - len(after.actionable)
    lines.append(f"after: {len(after.actionable)} finding(s) to fix, {left} left alone")
    lines += ["  " + f.line() for f in after.findings]
    return "\n".join(lines)
