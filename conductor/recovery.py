"""Recovery plans: what `computeflow resume` would do with each unfinished
operation, and why, decided from the flow log *and* the hypervisor.

For every operation not ended: who owns it and whether that owner is alive
(a live owner is running it: nothing to do), the steps where it stopped, and
the direction:
- a flow that was reverting keeps reverting (steps already undone cannot be
  done again safely);
- a forward-only operation past its hold goes forward;
- otherwise each interrupted step is probed (it declares how: the guest's
  power state on a host once it is done, see Step.probe_guest): a step whose
  effect is already there makes the resume go forward (re-running it is a
  no-op); else the catalogue's per-kind default (OperationKind.resume_direction).
`[conductor] resume_direction` (e.g. `spawn:revert`) overrides that default
per kind. Where both directions are safe, an operator may choose (`resume OP
--direction`): reverting is then asked for as a cancel, which the resumed run
honours at its first step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from oslo_utils import importutils
from taskflow import task as tf_task

from conductor import cancel, ownership, repair
from conductor.config import ConfigError
from drivers.base import PowerState
from drivers.errors import GuestNotFound
from flows import catalog
from flows.steps.base import GUEST_ABSENT, GUEST_DEFINED
from persistence import operations, operator_actions
from persistence.models import TASKFLOW_TABLES, Operation, utcnow

FORWARD, REVERT, NONE = "forward", "revert", "none"
_DONE_OR_STARTED = ("SUCCESS", "FAILURE", "RUNNING", "REVERTING", "REVERT_FAILURE")


@dataclass(frozen=True)
class Probe:
    step: str
    host: str
    fact: str
    #: Whether the hypervisor shows the step's effect (None: could not tell).
    done: bool | None


@dataclass(frozen=True)
class ResumePlan:
    op_id: str
    kind: str
    state: str
    owner: str | None
    owner_status: str
    stopped_at: list[str]
    direction: str
    #: forward: the steps that will run, in order; revert: the steps that will
    #: be undone, newest first.
    steps: list[str]
    why: str
    probes: list[Probe] = field(default_factory=list)
    #: Both directions are safe: `--direction` may choose.
    choosable: bool = False

    def text(self) -> str:
        lines = [f"{self.op_id} {self.kind} {self.state}, owner {self.owner or '-'} ({self.owner_status})"]
        if self.stopped_at:
            lines.append(f"  stopped at: {', '.join(self.stopped_at)}")
        lines += [f"  probe {p.step} on {p.host}: {p.fact}" for p in self.probes]
        if self.direction == NONE:
            lines.append(f"  resume would do nothing: {self.why}")
        else:
            what = "run" if self.direction == FORWARD else "revert"
            lines.append(f"  resume goes {self.direction}: {what} {', '.join(self.steps) or '(nothing)'}")
            lines.append(f"  why: {self.why}")
            if self.choosable:
                other = REVERT if self.direction == FORWARD else FORWARD
                lines.append(f"  (`computeflow resume {self.op_id} --direction {other}` is safe too)")
        return "\n".join(lines)


def owner_status(op: Operation, now: dt.datetime | None = None) -> str:
    """alive / dead / lease expired / none."""
    now = now or utcnow()
    if op.owner is None:
        return "none"
    if ownership.is_dead(op.owner):
        return "dead"
    if op.lease_expires_at is not None and op.lease_expires_at < now:
        return "lease expired"
    return "alive"


def plans(conductor, op_id: str | None = None) -> list[ResumePlan]:
    with conductor.db.session() as s:
        if op_id is not None:
            op = operations.get(s, op_id)
            if op is None:
                raise operator_actions.Refused(operations.not_found(s, op_id))
            if op.state not in operations.ACTIVE_STATES:
                raise operator_actions.Refused(f"operation {op.id} already ended {op.state}: nothing to resume")
            ops = [op]
        else:
            ops = operations.resumable(s)
        states = {o.id: _atom_states(s, o) for o in ops}
        forward_started = {o.id: cancel.past_no_return(s, o) for o in ops}
        for o in ops:
            s.expunge(o)
    return [plan(conductor, o, states[o.id], forward_started[o.id]) for o in ops]


def _atom_states(s, op: Operation) -> dict[str, str]:
    ad = TASKFLOW_TABLES.atomdetails
    return dict(
        s.execute(sa.select(ad.c.name, ad.c.state).where(ad.c.parent_uuid == (op.flow_detail_uuid or op.id))).all()
    )


def plan(conductor, op: Operation, states: dict[str, str], forward_started: bool) -> ResumePlan:
    status = owner_status(op)
    kind = catalog.get(op.kind)
    flow = _flow(op)  # rebuilt once: the step order and the probes both come from it
    order = _task_order(flow)
    stopped = [n for n in order if states.get(n) in ("RUNNING", "REVERTING")]
    base = dict(op_id=op.id, kind=op.kind, state=op.state, owner=op.owner, owner_status=status, stopped_at=stopped)
    if status == "alive":
        return ResumePlan(
            **base,
            direction=NONE,
            steps=[],
            why=f"its owner {op.owner} is alive (lease until {op.lease_expires_at:%H:%M:%S} UTC) and running it",
        )
    forward_steps = [n for n in order if states.get(n) != "SUCCESS"]
    revert_steps = [n for n in reversed(order) if states.get(n) in _DONE_OR_STARTED]
    reverting = op.state == operations.REVERTING or any(
        v in ("REVERTING", "REVERTED", "FAILURE") for v in states.values()
    )
    if op.state == operations.PENDING and not states:
        return ResumePlan(**base, direction=FORWARD, steps=order, why="it never started")
    if reverting:
        return ResumePlan(
            **base,
            direction=REVERT,
            steps=revert_steps,
            why="it was reverting when its owner stopped; steps already undone are not done again",
        )
    if kind.forward_only or forward_started:
        return ResumePlan(
            **base, direction=FORWARD, steps=forward_steps, why="it is past its point of no return (forward-only)"
        )
    probes = _probe(conductor, op, flow, [n for n in stopped if states.get(n) == "RUNNING"])
    done = [p for p in probes if p.done]
    if done:
        why = f"the hypervisor shows {', '.join(p.step for p in done)} done: running it again is a no-op, then the rest"
        return ResumePlan(**base, direction=FORWARD, steps=forward_steps, why=why, probes=probes, choosable=True)
    configured = default_directions(conductor.conf)
    direction = configured.get(op.kind, kind.resume_direction)
    why = (
        f"the configured direction for {op.kind} ([conductor] resume_direction)"
        if op.kind in configured
        else f"the catalogue's default for {op.kind}"
    ) + (
        "; the interrupted step runs again from the start (every step is idempotent)"
        if direction == FORWARD
        else "; what was done is undone"
    )
    return ResumePlan(
        **base,
        direction=direction,
        steps=forward_steps if direction == FORWARD else revert_steps,
        why=why,
        probes=probes,
        choosable=True,
    )


def default_directions(conf) -> dict[str, str]:
    """[conductor] resume_direction, checked: known kinds, forward or revert."""
    configured = dict(conf.conductor.resume_direction or {})
    for kind, direction in configured.items():
        if kind not in catalog.CATALOG or direction not in (FORWARD, REVERT):
            raise ConfigError(
                f"configuration: [conductor] resume_direction: {kind}:{direction} "
                f"(a kind of {', '.join(sorted(catalog.CATALOG))}, "
                "then forward or revert)"
            )
    return configured


def _task_order(flow) -> list[str]:
    """The operation's steps in flow order (its flow rebuilt by its factory)."""
    return [a.name for a in repair._atoms(flow) if isinstance(a, tf_task.Task)] if flow else []


def _flow(op: Operation):
    try:
        factory = importutils.import_class(catalog.get(op.kind).factory)
        return factory(**(op.parameters or {}))
    except Exception:  # noqa: BLE001 - a flow version gone: the plan names no steps
        return None


def _probe(conductor, op: Operation, flow, running: list[str]) -> list[Probe]:
    if flow is None or not running:
        return []
    store = {"operation_id": op.id, **(op.parameters or {})}
    found = []
    for atom in repair._atoms(flow):
        want = getattr(atom, "probe_guest", None)
        if atom.name not in running or want is None:
            continue
        host_key = (getattr(atom, "rebind", None) or {}).get(atom.probe_host_arg, atom.probe_host_arg)
        host, uuid = store.get(host_key), store.get("instance_uuid")
        if not host or not uuid:
            continue
        try:
            info = conductor.rt.driver_for(host).get_info(uuid)
        except GuestNotFound:
            found.append(Probe(atom.name, host, f"no guest on {host}", want == GUEST_ABSENT))
            continue
        except Exception as e:  # noqa: BLE001 - an unreachable host: say so, decide without it
            found.append(Probe(atom.name, host, f"not probed: {e}", None))
            continue
        fact = f"guest on {host} is {info.state.value}"
        done = want == GUEST_DEFINED or (want not in (GUEST_ABSENT,) and info.state is PowerState(want))
        found.append(Probe(atom.name, host, fact, done))
    return found


def resume_one(conductor, op_id: str, direction: str | None, by: str, on_event=None):
    """Resume one operation, in `direction` if given (it must be safe)."""
    (p,) = plans(conductor, op_id)
    if p.direction == NONE:
        raise operator_actions.Refused(f"operation {p.op_id} is not resumable: {p.why}")
    chosen = direction or p.direction
    if chosen != p.direction and not p.choosable:
        raise operator_actions.Refused(f"operation {p.op_id} can only go {p.direction}: {p.why}")
    dead = (p.owner,) if p.owner and ownership.is_dead(p.owner) else ()
    if chosen == REVERT and p.choosable:  # not reverting yet: ask for it as a cancel
        with conductor.db.session() as s:
            why = "resume --direction revert" if direction else f"resume: {p.why}"
            outcome = cancel.request(s, p.op_id, f"{by} ({why})"[:255], dead)
        if outcome.done:
            return conductor.status(p.op_id)
    return conductor.run(p.op_id, on_event, dead_owners=dead)  # in line for a host slot if need be
