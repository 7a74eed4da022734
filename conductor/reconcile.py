"""Reconciliation: compare the database with what each host really holds.

`audit` reads the database (live instances with their host, vifs, volumes and
any resize in flight; claims; holds; running operations) and every host's
`host_report()`, and returns one `Finding` per disagreement, each with the
action that would fix it. It changes nothing (the dry run). `apply` turns the
findings' actions into `reconcile` operations (flows/reconcile.py), grouped
per instance, run like any other operation: persisted, visible in `ops list`,
crash-safe; and it resumes operations whose owner died.

What is never touched:
- an instance an operation holds (running, or FAILED and waiting for an
  operator): its operation owns it; the finding says so;
- a resource without computeflow's marks (drivers report it with no
  instance): reported, left alone;
- a host marked down (its leftovers go when it comes back: `hosts set-up`).

Policy, in the order an operator would reason:
- a guest, disk, port, volume attachment or copy of no live instance is an
  orphan: removed from that host;
- a live instance's guest or copy on a host where the database does not place
  it is a stray copy: removed, but only if the instance's own guest is where
  the database says (else the finding says the guest is misplaced, for an
  operator);
- a live instance without its guest: if the host keeps its resize source
  copy (a failed move cleaned up by hand), the copy is restored, stopped;
  otherwise the instance is shown in error;
- a power state that differs from the hypervisor's is recorded (the
  hypervisor is the truth for what runs, as in Nova's power-state sync);
- ports and volume attachments follow the instance's record;
- a claim no running operation and no instance there needs is released; a
  hold of an ended operation is dropped; usage counters that differ from the
  sum of the claims are recounted.

The comparisons are in `reconcile_findings`, the grouping of their actions
into operations in `reconcile_repairs`, the report both return in
`reconcile_report`; this module runs an audit and applies it.
"""

from __future__ import annotations

import logging
import threading

from conductor import ownership
from conductor.handle import OperationTimeout
from conductor.reconcile_findings import (
    busy_instances,
    instance_findings,
    operation_findings,
    orphan_findings,
    read_db,
    record_findings,
)
from conductor.reconcile_report import Applied, Audit, Finding
from conductor.reconcile_repairs import plans, submit
from drivers.base import HostReport
from persistence import hosts, operations

LOG = logging.getLogger(__name__)


def audit(conductor, host: str | None = None) -> Audit:
    """Every disagreement (see module docstring); reads only.

    The hosts are read before the database: an operation that starts while
    the hosts are read is then seen in flight by the database read (its
    instance busy), instead of its new resources looking like strays."""
    with conductor.db.session() as s:
        host_rows = [(h.name, h.down) for h in hosts.list_hosts(s)]
    result = Audit()
    reports: dict[str, HostReport] = {}
    for name, down in host_rows:
        if host is not None and name != host:
            continue
        if down:
            result.skipped_hosts[name] = "marked down (`hosts set-up` cleans it when back)"
            continue
        try:
            reports[name] = conductor.rt.driver_for(name).host_report()
        except Exception as e:  # noqa: BLE001 - an unreachable host is a finding, not a crash
            result.skipped_hosts[name] = f"not probed: {type(e).__name__}: {e}"
            result.findings.append(Finding("host-unreachable", name, name, str(e)))
    db = read_db(conductor, host)
    result.instances = len(db.live)
    result.hosts = sorted(reports)
    busy = busy_instances(db)
    result.findings += operation_findings(db)
    indexed = {h: rep.by_instance() for h, rep in reports.items()}  # one pass per host
    for uuid, inst in db.live.items():
        result.findings += instance_findings(inst, indexed, busy.get(uuid), db)
    result.findings += orphan_findings(indexed, db, busy)
    result.findings += record_findings(db, host)
    return result


def apply(conductor, result: Audit, stop: threading.Event | None = None) -> list[Applied]:
    """Carry out the audit's actions: resume orphaned operations, then run one
    reconcile operation per plan (through the jobboard when one is set)."""
    done: list[Applied] = []
    todo, to_resume = plans(result)
    for op_id in to_resume:
        with conductor.db.session() as s:
            op = operations.get(s, op_id)
        dead = (op.owner,) if op and op.owner and ownership.is_dead(op.owner) else ()
        try:
            final = conductor.runner.run(op_id, dead_owners=dead)
        except Exception as e:  # noqa: BLE001 - taken by another conductor meanwhile
            LOG.info("resume of %s skipped: %s", op_id, e)
            continue
        done.append(Applied(op_id, final.instance_uuid, final.state, final.error, ["resume"]))
    for plan in todo:
        handle = submit(conductor, plan)
        names = [a["action"] + (f"@{a['host']}" if a.get("host") else "") for a in plan.actions]
        if handle is None:
            done.append(
                Applied("-", plan.instance_uuid, "SKIPPED", "the instance became busy; run reconcile again", names)
            )
            continue
        status = _wait(handle, stop)
        if status is None:
            done.append(
                Applied(
                    handle.id,
                    plan.instance_uuid,
                    "LEFT",
                    "this conductor is stopping; the jobboard gives it to another",
                    names,
                )
            )
            continue
        done.append(Applied(handle.id, plan.instance_uuid, status.state, status.error, names))
    return done


def _wait(handle, stop: threading.Event | None):
    """The operation's final status; None if `stop` is set first (a conductor
    service shutting down must not wait for another conductor's run)."""
    if stop is None:
        return handle.wait()
    while not stop.is_set():
        try:
            return handle.wait(timeout=1.0)
        except OperationTimeout:
            continue
    return None
