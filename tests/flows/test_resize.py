"""Resize and cold migration, confirm, revert and auto-confirm on the fake driver.

Success on every database; a failure injected at each step of resize and
migrate (before and after its side effect) restores the instance record,
claims, host usage and every fake host exactly; confirm and revert are
forward-only: a step failing once is retried, and when retries run out the
instance is left in ERROR with the migration record, which only the same
kind of operation may finish.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from conductor import moves
from flows.errors import InsufficientCapacity, InvalidRequest, InvalidState, NotFound
from persistence import claims, operations
from persistence.models import Host, Instance
from tests.flows.catalogue import Case, instance, prepare, world

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

# (case, steps of its flow for a running m1.small with one interface)
MOVES = [
    Case("resize", {"flavor": "m1.medium"}, end=("resized", "running")),
    Case("migrate", {}, end=("resized", "running")),
    Case("migrate", {}, setup=(("power_off", {}),), end=("resized", "shutdown")),
]
RUNNING_STEPS = [
    "take_hold",
    "claim_destination",
    "migrate_disk_and_power_off",
    "plug_vif_0",
    "finish_migration",
    "wait_running",
    "mark_done",
]


def _id(v):
    if isinstance(v, Case):
        return v.op + "".join(f"-{o}" for o, _ in v.setup)
    return None


def steps(case: Case) -> list[str]:
    return [s for s in RUNNING_STEPS if s != "wait_running" or not case.setup]


@pytest.fixture
def two_hosts(conductor):
    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    with conductor.rt.driver_for("h2").state.change():
        pass  # the state file exists from the start, so "as before" compares files
    return conductor


def usage(c, host: str) -> tuple[int, int, int]:
    with c.db.session() as s:
        h = s.get(Host, host)
        return h.used_vcpus, h.used_ram_mb, h.used_disk_gb


def claim_rows(c) -> list[tuple]:
    with c.db.session() as s:
        return sorted((cl.host, cl.vcpus, cl.ram_mb, cl.disk_gb) for cl in claims.all_claims(s))


def run(c, op: str, name: str = "vm1", **params):
    return c.run(c.submit(op, name, **params))


@pytest.mark.parametrize("case", MOVES, ids=_id)
def test_move_waits_in_resized_then_confirm_cleans_the_source(two_hosts, case):
    c = two_hosts
    uuid = prepare(c, case)
    status = run(c, case.op, **case.params)
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(c, uuid)
    flavor = case.params.get("flavor", "m1.small")
    assert (inst.vm_state, inst.power_state, inst.task_state, inst.held_by) == (*case.end, None, None)
    assert (inst.host, inst.flavor) == ("h2", flavor)
    mig = inst.system_metadata["migration"]
    assert (mig["source_host"], mig["old_flavor"]["name"], mig["new_flavor"]["name"]) == ("h1", "m1.small", flavor)
    # both sides hold their claim and their copy until confirm
    assert claim_rows(c) == sorted(
        [("h1", 1, 2048, 16), ("h2", *{"m1.small": (1, 2048, 16), "m1.medium": (2, 4096, 31)}[flavor])]
    )
    h1, h2 = c.rt.driver_for("h1").inventory(), c.rt.driver_for("h2").inventory()
    assert h1.guests == (f"{uuid} (resize source)",)
    assert all(x.endswith("(resize source)") for x in h1.disks + h1.ports) and len(h1.ports) == 1
    assert h2.guests == (uuid,) and len(h2.disks) == 3 and len(h2.ports) == 1
    guest = c.rt.driver_for("h2").state.read()["guests"][uuid]
    assert guest["power_state"] == case.end[1]
    assert guest["vcpus"] == (2 if flavor == "m1.medium" else 1)

    status = run(c, "confirm_resize")
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(c, uuid)
    expected_vm = "active" if case.end[1] == "running" else "stopped"
    assert (inst.vm_state, inst.power_state, inst.host, inst.held_by) == (expected_vm, case.end[1], "h2", None)
    assert "migration" not in inst.system_metadata
    assert c.rt.driver_for("h1").inventory().empty
    assert usage(c, "h1") == (0, 0, 0)
    assert [r[0] for r in claim_rows(c)] == ["h2"]


@pytest.mark.parametrize("case", MOVES, ids=_id)
def test_revert_puts_everything_back_as_before_the_move(two_hosts, case):
    c = two_hosts
    uuid = prepare(c, case)
    before = world(c, uuid)
    assert run(c, case.op, **case.params).state == operations.SUCCEEDED
    status = run(c, "revert_resize")
    assert status.state == operations.SUCCEEDED, status.error
    assert world(c, uuid) == before


@sqlite_only
@pytest.mark.parametrize("then", ["confirm_resize", "revert_resize"])
def test_resize_in_place_holds_both_flavors_until_settled(two_hosts, then):
    c = two_hosts
    c.conf.set_override("allow_resize_to_same_host", True)
    uuid = prepare(c, Case("resize"))
    before = world(c, uuid)
    status = run(c, "resize", flavor="m1.medium", target_host="h1")
    assert status.state == operations.SUCCEEDED, status.error
    assert instance(c, uuid).host == "h1"
    assert usage(c, "h1") == (3, 6144, 47)  # old and new flavor, until settled
    inv = c.rt.driver_for("h1").inventory()
    assert uuid in inv.guests and f"{uuid} (resize source)" in inv.guests
    assert run(c, then).state == operations.SUCCEEDED
    if then == "revert_resize":
        assert world(c, uuid) == before
    else:
        assert usage(c, "h1") == (2, 4096, 31)
        assert c.rt.driver_for("h1").inventory().guests == (uuid,)
        assert instance(c, uuid).flavor == "m1.medium"


@sqlite_only
@pytest.mark.parametrize(
    "case,step,when",
    [(c, s, w) for c in MOVES for s in steps(c) for w in ("before", "after")],
    ids=lambda v: _id(v) or v,
)
def test_failure_at_each_step_restores_everything(two_hosts, case, step, when):
    c = two_hosts
    uuid = prepare(c, case)
    before = world(c, uuid)
    c.rt.faults.arm(f"{step}:execute:fail:{when}")
    status = run(c, case.op, **case.params)
    assert status.state == operations.REVERTED, status.error
    assert f"injected failure at step {step}" in status.error
    assert world(c, uuid) == before


@sqlite_only
@pytest.mark.parametrize(
    "op,step",
    [("confirm_resize", s) for s in ("confirm_migration", "release_source_claims", "mark_done")]
    + [
        ("revert_resize", s)
        for s in (
            "destroy_on_destination",
            "unplug_vifs",
            "finish_revert_migration",
            "release_destination_claim",
            "mark_done",
        )
    ],
)
def test_forward_only_steps_are_retried_never_reverted(two_hosts, op, step):
    c = two_hosts
    uuid = prepare(c, MOVES[1])
    before = world(c, uuid)
    assert run(c, "migrate").state == operations.SUCCEEDED
    c.rt.faults.arm(f"{step}:execute:fail-once:after")
    status = run(c, op)
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(c, uuid)
    assert (inst.vm_state, inst.held_by, inst.task_state) == ("active", None, None)
    if op == "revert_resize":
        assert world(c, uuid) == before
    else:
        assert c.rt.driver_for("h1").inventory().empty and inst.host == "h2"


@sqlite_only
def test_confirm_that_runs_out_of_retries_can_only_be_finished_by_confirm(two_hosts):
    c = two_hosts
    uuid = prepare(c, MOVES[1])
    assert run(c, "migrate").state == operations.SUCCEEDED
    c.rt.faults.arm("release_source_claims:execute:fail:after")
    status = run(c, "confirm_resize")
    assert status.state == operations.REVERTED
    inst = instance(c, uuid)
    assert (inst.vm_state, inst.held_by) == ("error", None)
    assert c.rt.driver_for("h1").inventory().empty  # the source copy is gone: no way back
    with pytest.raises(InvalidRequest, match="a confirm of its resize was started"):
        c.submit("revert_resize", "vm1")
    c.rt.faults.clear()
    assert run(c, "confirm_resize").state == operations.SUCCEEDED
    inst = instance(c, uuid)
    assert (inst.vm_state, inst.host) == ("active", "h2")
    assert usage(c, "h1") == (0, 0, 0)


@sqlite_only
def test_auto_confirm_confirms_only_resizes_older_than_the_window(two_hosts):
    c = two_hosts
    prepare(c, MOVES[1])
    assert run(c, "migrate").state == operations.SUCCEEDED
    assert moves.auto_confirm(c) == []  # window 0: never
    c.conf.set_override("resize_confirm_window", 60, "conductor")
    assert moves.auto_confirm(c) == []  # resized just now
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=61)
    assert moves.due_for_confirm(c, now=later) == [instance_uuid(c)]
    _age(c, seconds=120)
    done = c.resume()
    assert [(d.kind, d.state) for d in done] == [("confirm_resize", operations.SUCCEEDED)]
    inst = instance(c, instance_uuid(c))
    assert (inst.vm_state, inst.host) == ("active", "h2")
    assert c.rt.driver_for("h1").inventory().empty
    assert moves.auto_confirm(c) == []


def _age(c, seconds: int) -> None:
    """Move the instance's resized_at back in time (instead of sleeping)."""
    with c.db.session() as s:
        inst = s.get(Instance, instance_uuid(c))
        meta = dict(inst.system_metadata)
        at = dt.datetime.fromisoformat(meta["migration"]["resized_at"])
        meta["migration"] = {**meta["migration"], "resized_at": (at - dt.timedelta(seconds=seconds)).isoformat()}
        inst.system_metadata = meta


def instance_uuid(c) -> str:
    with c.db.session() as s:
        return s.scalar(sa.select(Instance.uuid).where(Instance.name == "vm1"))


@sqlite_only
@pytest.mark.parametrize(
    "op,params,error,match",
    [
        ("resize", {"flavor": "m1.small"}, InvalidRequest, "already has flavor m1.small"),
        ("resize", {"flavor": "m1.tiny"}, InvalidRequest, "would shrink the root disk"),
        ("resize", {"flavor": "nope"}, NotFound, "unknown flavor 'nope'"),
        ("resize", {}, InvalidRequest, "resize needs flavor"),
        ("resize", {"flavor": "m1.medium", "target_host": "h1"}, InvalidRequest, "already on h1: choose another host"),
        ("migrate", {"target_host": "h1"}, InvalidRequest, "already on h1"),
        ("migrate", {"target_host": "h9"}, NotFound, "unknown host 'h9'"),
        ("migrate", {"target_host": "small"}, InsufficientCapacity, "host small lacks capacity"),
        ("migrate", {"target_host": "h2"}, InvalidRequest, "host h2 is down"),
        ("confirm_resize", {}, InvalidState, "it is active"),
        ("revert_resize", {}, InvalidState, "it is active"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(two_hosts, op, params, error, match):
    c = two_hosts
    c.add_host("small", vcpus=1, ram_mb=512, disk_gb=5)
    uuid = prepare(c, Case(op))
    if params.get("target_host") == "h2":
        moves.set_host_down(c, "h2")
    before = world(c, uuid)
    with pytest.raises(error, match=match):
        c.submit(op, "vm1", **params)
    assert world(c, uuid) == before


@sqlite_only
def test_migrate_without_room_anywhere_is_refused(conductor):
    prepare(conductor, Case("migrate"))
    with pytest.raises(InsufficientCapacity, match="no host but h1 has room for flavor m1.small"):
        conductor.submit("migrate", "vm1")
