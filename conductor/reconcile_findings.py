"""The comparisons of a reconciliation: database against host reports.

`conductor/reconcile.py`'s `audit` reads the database's side once, in one
session (`read_db`, here), and asks each comparison here for its findings:
unfinished operations whose owner is gone, each live instance against the
hosts (guest, disk, ports, volumes, stray copies), what hosts hold for no
live instance, and claims and usage counters. The policy they follow is in
reconcile.py's docstring. The comparisons read nothing further and change
nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from computeflow.states import VmState
from conductor import ownership
from conductor.reconcile_report import Finding
from drivers.base import Held, HeldResource, PowerState
from flows.steps.reconcile import expected_hosts
from persistence import claims, hosts, instances, operations
from persistence.models import Claim, Instance, Operation, utcnow

#: vm_states of an instance that must have a guest on its host.
_HAS_GUEST = frozenset({"active", "stopped", "paused", "suspended", "rescued", "soft_deleted", "resized"})


@dataclass(frozen=True)
class DbSnapshot:
    """The database's side, read in one session."""

    live: dict[str, Instance]
    names: dict[str, tuple[str, str]]  # uuid -> (name, vm_state), deleted ones too
    active_ops: list[Operation]
    op_states: dict[str, str]
    all_claims: list[Claim]
    host_rows: list


def read_db(conductor, host: str | None) -> DbSnapshot:
    """Everything the comparisons need from the database, in one session and
    detached from it: the hypervisors are asked afterwards, without a
    transaction held open across their calls."""
    with conductor.db.session() as s:
        live = {i.uuid: i for i in instances.list_live(s)}
        names = {u: (n, v) for u, n, v in s.execute(sa.select(Instance.uuid, Instance.name, Instance.vm_state))}
        active = operations.resumable(s)
        held_by = {i.held_by for i in live.values() if i.held_by}
        all_claims = claims.all_claims(s)
        wanted = held_by | {c.operation_id for c in all_claims}
        op_states = (
            dict(s.execute(sa.select(Operation.id, Operation.state).where(Operation.id.in_(wanted))).all())
            if wanted
            else {}
        )
        host_rows = hosts.list_hosts(s)
        for obj in [*live.values(), *active, *all_claims, *host_rows]:
            s.expunge(obj)
    return DbSnapshot(live, names, active, op_states, all_claims, host_rows)


def busy_instances(db: DbSnapshot) -> dict[str, str]:
    """uuid -> why reconciliation leaves it alone (an operation owns it)."""
    busy = {
        op.instance_uuid: f"operation {op.id} ({op.kind}) is {op.state}" for op in db.active_ops if op.instance_uuid
    }
    for uuid, inst in db.live.items():
        if inst.held_by and uuid not in busy:
            state = db.op_states.get(inst.held_by)
            if state == operations.FAILED:
                busy[uuid] = (
                    f"operation {inst.held_by} FAILED and holds it: repair it first "
                    f"(`ops retry-revert` or `ops mark-reverted`)"
                )
    return busy


def operation_findings(db: DbSnapshot) -> list[Finding]:
    now = utcnow()
    found = []
    for op in db.active_ops:
        dead = op.owner is not None and ownership.is_dead(op.owner)
        lapsed = op.lease_expires_at is not None and op.lease_expires_at < now
        if op.owner is None or not (dead or lapsed):
            continue  # pending for a board, or a live owner runs it
        why = f"{op.kind} {op.state}; its owner {op.owner} is " + (
            "dead" if dead else f"silent since its lease ended {_ago(now, op.lease_expires_at)}"
        )
        found.append(
            Finding(
                "orphaned-operation",
                None,
                op.id,
                why,
                op.instance_uuid,
                action={"action": "resume", "operation_id": op.id},
                fix=f"resume it (`computeflow resume {op.id}`)",
            )
        )
    return found


def _ago(now: dt.datetime, then: dt.datetime) -> str:
    return f"{int((now - then).total_seconds())}s ago"


def instance_findings(
    inst: Instance, indexed: dict[str, dict[str | None, list[HeldResource]]], busy: str | None, db: DbSnapshot
) -> list[Finding]:
    """Where the database places a live instance against where its things are."""
    held = {h: by[inst.uuid] for h, by in indexed.items() if inst.uuid in by}
    name, uuid = inst.name, inst.uuid
    if busy is not None:  # its operation owns it; a FAILED one needs an operator first
        if db.op_states.get(inst.held_by) != operations.FAILED:
            return []
        return [
            Finding("needs-repair", inst.host, uuid, f"not compared: {busy}", uuid, name, fix="left for an operator")
        ]
    found: list[Finding] = []
    if inst.held_by:
        state = db.op_states.get(inst.held_by, "missing")
        found.append(
            Finding(
                "stale-hold",
                None,
                uuid,
                f"held by operation {inst.held_by}, which is {state}",
                uuid,
                name,
                {"action": "release_stale_hold", "host": None, "instance_uuid": uuid, "held_by": inst.held_by},
                "release the hold",
            )
        )
    expected = expected_hosts(inst)
    home = inst.host
    mig = (inst.system_metadata or {}).get("migration")
    home_rs = held.get(home, []) if home in indexed else None
    guest_here = next((r for r in home_rs or [] if r.kind is Held.GUEST), None)
    guests_elsewhere = [h for h, rs in held.items() if h != home and any(r.kind is Held.GUEST for r in rs)]

    def act(action: str, host: str, **extra) -> dict:
        return {"action": action, "host": host, "instance_uuid": uuid, **extra}

    if home_rs is not None:
        kept = any(r.kind is Held.KEPT_COPY for r in home_rs)
        if guest_here is None and inst.vm_state in _HAS_GUEST | {"error"}:
            if kept and not mig:
                found.append(
                    Finding(
                        "guest-missing",
                        home,
                        uuid,
                        "no guest, but its resize source copy is here (a failed move cleaned up by hand)",
                        uuid,
                        name,
                        act("restore_kept_copy", home),
                        "restore the kept copy, stopped",
                    )
                )
            elif guests_elsewhere:
                found.append(
                    Finding(
                        "guest-misplaced",
                        home,
                        uuid,
                        f"no guest here, but {', '.join(guests_elsewhere)} has one",
                        uuid,
                        name,
                        fix="left for an operator: which copy is the instance?",
                    )
                )
            elif inst.vm_state != VmState.ERROR or inst.power_state != PowerState.NOSTATE.value:
                found.append(
                    Finding(
                        "guest-missing",
                        home,
                        uuid,
                        f"{inst.vm_state} in the database, no guest on any host",
                        uuid,
                        name,
                        act("mark_guest_missing", home),
                        "show it in error",
                    )
                )
            else:
                found.append(
                    Finding(
                        "guest-missing",
                        home,
                        uuid,
                        "in error without a guest",
                        uuid,
                        name,
                        fix="left for an operator: destroy or rebuild it",
                    )
                )
        if (
            guest_here is not None
            and guest_here.power_state is not None
            and guest_here.power_state.value != inst.power_state
        ):
            found.append(
                Finding(
                    "power-drift",
                    home,
                    uuid,
                    f"database says {inst.power_state}, hypervisor says {guest_here.power_state.value}",
                    uuid,
                    name,
                    act("record_power_state", home),
                    f"record {guest_here.power_state.value}",
                )
            )
        if guest_here is not None and not any(_is_root_disk(r) for r in home_rs):
            found.append(
                Finding(
                    "root-disk-missing",
                    home,
                    uuid,
                    "the guest is defined, its root disk is gone",
                    uuid,
                    name,
                    fix="left for an operator: rebuild it (or restore the disk)",
                )
            )
        if guest_here is not None:  # (a kept copy, once restored, brings its own back)
            found += _port_findings(inst, home, home_rs, act)
            found += _volume_findings(inst, home, home_rs, act)
        if kept and mig and mig.get("source_host") != home:
            found.append(
                Finding(
                    "stale-copy",
                    home,
                    uuid,
                    "a resize source copy is kept here, but the resize keeps its source elsewhere",
                    uuid,
                    name,
                    act("discard_kept_copy", home),
                    "delete the kept copy",
                )
            )
    for h, rs in held.items():
        if h == home:
            continue
        if h in expected:  # the other side of a resize waiting for confirm or revert
            if mig and h == mig.get("source_host") and h != mig.get("dest_host"):
                if any(r.kind is Held.GUEST for r in rs):
                    found.append(
                        Finding(
                            "stray-guest",
                            h,
                            uuid,
                            "the resize source should be a kept copy, not a defined guest",
                            uuid,
                            name,
                            fix="left for an operator",
                        )
                    )
            continue
        if home_rs is None:
            found.append(
                Finding(
                    "stray-copy",
                    h,
                    uuid,
                    f"{_kinds(rs)} on a host the database "
                    f"does not place it on; its host {home} was not probed "
                    "(--host, down or unreachable)",
                    uuid,
                    name,
                    fix="left alone until its host is probed",
                )
            )
            continue
        if guest_here is None:
            found.append(
                Finding(
                    "stray-copy",
                    h,
                    uuid,
                    f"{_kinds(rs)} on a host the database does not place it on, and no guest on {home}",
                    uuid,
                    name,
                    fix="left for an operator: it may be the only copy",
                )
            )
            continue
        found.append(
            Finding(
                "stray-copy",
                h,
                uuid,
                f"{_kinds(rs)} on a host the database does not place it on (it runs on {home})",
                uuid,
                name,
                act("remove_from_host", h, live=True),
                f"remove them from {h}",
            )
        )
    return found


def _is_root_disk(r: HeldResource) -> bool:
    """Drivers name a disk by its kind (fake) or its file, disk.<kind> (libvirt)."""
    return r.kind is Held.DISK and r.detail.removeprefix("disk.") == "root"


def _kinds(rs: Iterable[HeldResource]) -> str:
    counts: dict[str, int] = {}
    for r in rs:
        counts[r.kind.value] = counts.get(r.kind.value, 0) + 1
    return ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items())


def _port_findings(inst: Instance, host: str, rs: list[HeldResource], act) -> list[Finding]:
    want = {v["id"]: v for v in inst.vifs or []}
    have = {r.id for r in rs if r.kind is Held.PORT}
    found = [
        Finding(
            "port-missing",
            host,
            vid,
            "the instance's interface is not plugged",
            inst.uuid,
            inst.name,
            act("plug_port", host, vif=v),
            "plug it",
        )
        for vid, v in want.items()
        if vid not in have
    ]
    found += [
        Finding(
            "orphan-port",
            host,
            vid,
            "plugged for the instance, not in its record",
            inst.uuid,
            inst.name,
            act("unplug_port", host, vif_id=vid),
            "unplug it",
        )
        for vid in sorted(have - set(want))
    ]
    return found


def _volume_findings(inst: Instance, host: str, rs: list[HeldResource], act) -> list[Finding]:
    want = {v["volume_id"] for v in inst.volumes or []}
    have = {r.id: r for r in rs if r.kind is Held.VOLUME}
    found = [
        Finding(
            "orphan-volume",
            host,
            vol,
            "attached to the guest, not in its record",
            inst.uuid,
            inst.name,
            act("detach_volume", host, volume_id=vol, mountpoint=r.detail),
            "detach it",
        )
        for vol, r in sorted(have.items())
        if vol not in want
    ]
    found += [
        Finding(
            "volume-missing",
            host,
            vol,
            "in the record, not attached",
            inst.uuid,
            inst.name,
            fix="left for an operator: detach-volume, then attach-volume",
        )
        for vol in sorted(want - set(have))
    ]
    return found


def orphan_findings(
    indexed: dict[str, dict[str | None, list[HeldResource]]], db: DbSnapshot, busy: dict[str, str]
) -> list[Finding]:
    """What hosts hold for no live instance (or for no instance computeflow made)."""
    found = []
    in_flight = {op.instance_uuid for op in db.active_ops if op.instance_uuid}
    for h, by_uuid in sorted(indexed.items()):
        for uuid, rs in sorted(by_uuid.items(), key=lambda kv: kv[0] or ""):
            if uuid is None:
                found += [
                    Finding(
                        f"foreign-{r.kind.value}",
                        h,
                        r.id,
                        "not made by computeflow (no computeflow marks)",
                        fix="left alone",
                    )
                    for r in rs
                ]
                continue
            if uuid in db.live or uuid in in_flight or uuid in busy:
                continue
            name, vm_state = db.names.get(uuid, (None, None))
            why = f"instance {vm_state}" if vm_state else "no instance has this uuid"
            action = {"action": "remove_from_host", "host": h, "instance_uuid": uuid}
            for i, r in enumerate(sorted(rs, key=lambda r: (r.kind.value, r.id))):
                found.append(
                    Finding(
                        f"orphan-{r.kind.value}",
                        h,
                        r.id,
                        why,
                        uuid,
                        name,
                        action if i == 0 else None,
                        f"remove everything of {uuid[:8]} from {h}" if i == 0 else "removed with it",
                    )
                )
    return found


def record_findings(db: DbSnapshot, host: str | None) -> list[Finding]:
    """Claims, and usage counters against the claims."""
    found = []
    sums: dict[str, list[int]] = {}
    for c in db.all_claims:
        sums.setdefault(c.host, [0, 0, 0])
        for i, v in enumerate((c.vcpus, c.ram_mb, c.disk_gb)):
            sums[c.host][i] += v
        if host is not None and c.host != host:
            continue
        op_state = db.op_states.get(c.operation_id)
        if op_state in operations.ACTIVE_STATES:
            continue
        inst = db.live.get(c.instance_uuid)
        if inst is not None and c.host in expected_hosts(inst):
            continue
        why = f"instance {inst.name} is not on {c.host}" if inst is not None else "its instance is gone"
        found.append(
            Finding(
                "stale-claim",
                c.host,
                f"claim {c.operation_id[:8]}",
                f"{why}; operation {op_state or 'missing'}",
                c.instance_uuid,
                inst.name if inst else None,
                {
                    "action": "release_stale_claim",
                    "host": c.host,
                    "claim_operation": c.operation_id,
                    "claim_host": c.host,
                },
                f"release {c.vcpus} vCPU, {c.ram_mb} MB, {c.disk_gb} GB",
            )
        )
    for h in db.host_rows:
        if host is not None and h.name != host:
            continue
        want = sums.get(h.name, [0, 0, 0])
        have = [h.used_vcpus, h.used_ram_mb, h.used_disk_gb]
        if have != want:
            found.append(
                Finding(
                    "usage-drift",
                    h.name,
                    "usage",
                    f"counters {have}, claims sum to {want} (vCPU, MB, GB)",
                    action={"action": "recount_usage", "host": h.name},
                    fix="recount from the claims",
                )
            )
    return found
