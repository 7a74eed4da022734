"""Live migration on the fake driver: success with progress in the flow log; a
failure at each step before the switch-over reverts everything exactly (the
guest back on the source, nothing on the destination, no claim there); after
it, a failure retries forward and never reverts; abort and force-complete of
a migration that does not converge; requests and bad input refused cleanly."""

from __future__ import annotations

import threading
import time

import pytest

from conductor.api import SpawnRequest
from flows import live_migration
from flows.errors import InsufficientCapacity, InvalidRequest, InvalidState, NotFound
from persistence import claims, flowlog, instances, operations, progress
from tests.flows.catalogue import Case, instance, steps_of, world

CASE = Case("live_migration", {"target_host": "h2"})
STEPS = [
    "take_hold",
    "claim_destination",
    "check_live_migration",
    "pre_live_migration",
    "live_migration",
    "switch_over",
    "post_live_migration",
    "post_live_migration_at_source",
    "release_source_claims",
    "post_live_migration_at_destination",
    "mark_done",
]
SWITCH = STEPS.index("switch_over")
BEFORE_SWITCH = [(s, w) for s in STEPS[:SWITCH] for w in ("before", "after")] + [("switch_over", "before")]
AFTER_SWITCH = [(s, "after" if s == "switch_over" else "before") for s in STEPS[SWITCH:]]
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def two_hosts(c, paused: bool = False) -> str:
    """vm1 running on h1; h2 empty (its fake state file exists); vm1's uuid."""
    c.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros", host="h1"))
    assert c.run(op_id).state == operations.SUCCEEDED
    if paused:
        assert c.run(c.submit("pause", "vm1")).state == operations.SUCCEEDED
    with c.rt.driver_for("h2").state.change():
        pass
    with c.db.session() as s:
        return instances.find_live(s, "vm1").uuid


def progress_rows(c, op_id: str) -> list[str]:
    with c.db.session() as s:
        return [r.result for r in flowlog.entries(s, op_id) if r.state == progress.PROGRESS]


def assert_on(c, uuid: str, host: str, other: str) -> None:
    inv, gone = c.rt.driver_for(host).inventory(), c.rt.driver_for(other).inventory()
    assert (inv.guests, len(inv.disks), len(inv.ports)) == ((uuid,), 3, 1)
    assert gone.empty, gone
    with c.db.session() as s:
        assert {(cl.host, cl.instance_uuid) for cl in claims.all_claims(s)} == {(host, uuid)}


@pytest.mark.parametrize("paused", [False, True], ids=["active", "paused"])
def test_live_migration_moves_the_guest_and_its_claim(conductor, paused):
    uuid = two_hosts(conductor, paused)
    op_id = conductor.submit("live_migration", "vm1", target_host="h2")
    status = conductor.run(op_id)
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(conductor, uuid)
    state = ("paused", "paused") if paused else ("active", "running")
    assert (inst.host, inst.vm_state, inst.power_state, inst.task_state, inst.held_by) == ("h2", *state, None, None)
    assert_on(conductor, uuid, "h2", "h1")
    guest = conductor.rt.driver_for("h2").state.read()["guests"][uuid]
    assert all("/h2/instances/" in p for p in guest["disks"])
    assert progress_rows(conductor, op_id) == ["25%", "50%", "75%", "100%"]
    with conductor.db.session() as s:
        steps = flowlog.summarize(flowlog.entries(s, op_id))
    assert [st.step for st in steps if st.step != "retry_live_migration_forward"] == STEPS
    assert steps_of(CASE) == STEPS  # the flow as built (needs the runtime a conductor installs)
    assert {st.state for st in steps} == {"SUCCESS"}  # progress rows do not move a step
    # and back again: the claims follow
    assert conductor.run(conductor.submit("live_migration", "vm1", target_host="h1")).state == operations.SUCCEEDED
    assert_on(conductor, uuid, "h1", "h2")


@sqlite_only
@pytest.mark.parametrize("step,when", BEFORE_SWITCH)
def test_failure_before_the_switch_over_restores_everything(conductor, step, when):
    uuid = two_hosts(conductor)
    before = world(conductor, uuid)
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    status = conductor.run(conductor.submit("live_migration", "vm1", target_host="h2"))
    assert status.state == operations.REVERTED, status.error
    assert f"injected failure at step {step}" in status.error
    assert world(conductor, uuid) == before


@sqlite_only
@pytest.mark.parametrize("step,when", AFTER_SWITCH)
def test_after_the_switch_over_a_failure_is_retried_forward(conductor, step, when):
    uuid = two_hosts(conductor)
    conductor.rt.faults.arm(f"{step}:execute:fail-once:{when}")
    status = conductor.run(conductor.submit("live_migration", "vm1", target_host="h2"))
    assert status.state == operations.SUCCEEDED, status.error
    assert instance(conductor, uuid).host == "h2"
    assert_on(conductor, uuid, "h2", "h1")


@sqlite_only
def test_after_the_switch_over_exhausted_retries_leave_error_on_the_destination(conductor):
    uuid = two_hosts(conductor)
    conductor.rt.faults.arm("post_live_migration_at_destination:execute:fail")
    status = conductor.run(conductor.submit("live_migration", "vm1", target_host="h2"))
    assert status.state == operations.REVERTED
    inst = instance(conductor, uuid)
    assert (inst.host, inst.vm_state, inst.held_by) == ("h2", "error", None)
    # nothing was migrated back or rolled back: the guest runs on h2 with its claim
    assert conductor.rt.driver_for("h2").inventory().guests == (uuid,)
    assert conductor.rt.driver_for("h1").inventory().empty
    with conductor.db.session() as s:
        assert {cl.host for cl in claims.all_claims(s)} == {"h2"}


def _migrate_stalled(c, uuid: str, post_copy: bool = False) -> tuple[str, threading.Thread, dict]:
    """Start a migration that stops progressing at 50%; return once it reported 50%."""
    c.rt.driver_for("h1").simulate_memory_churn(uuid, stall_at=50, post_copy=post_copy)
    op_id = c.submit("live_migration", "vm1", target_host="h2")
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("status", c.run(op_id)))
    t.start()
    deadline = time.monotonic() + 30
    while "50%" not in progress_rows(c, op_id):
        assert time.monotonic() < deadline, "the migration never reported 50%"
        assert t.is_alive(), out
        threading.Event().wait(0.02)
    return op_id, t, out


@sqlite_only
def test_abort_stops_a_running_migration_and_reverts(conductor):
    uuid = two_hosts(conductor)
    conductor.rt.driver_for("h1").simulate_memory_churn(uuid, stall_at=50)
    before = world(conductor, uuid)
    op_id, t, out = _migrate_stalled(conductor, uuid)
    with conductor.db.session() as s:
        assert live_migration.request(s, "vm1", "abort") == op_id
    t.join(30)
    assert out["status"].state == operations.REVERTED
    assert "aborted on request" in out["status"].error
    assert world(conductor, uuid) == before
    assert "100%" not in progress_rows(conductor, op_id)


@sqlite_only
def test_force_complete_finishes_a_migration_that_does_not_converge(conductor):
    uuid = two_hosts(conductor)
    op_id, t, out = _migrate_stalled(conductor, uuid)
    with conductor.db.session() as s:
        live_migration.request(s, "vm1", "force_complete")
    t.join(30)
    assert out["status"].state == operations.SUCCEEDED, out["status"].error
    assert progress_rows(conductor, op_id)[-2:] == ["50%", "100%"]
    assert_on(conductor, uuid, "h2", "h1")


@sqlite_only
def test_a_post_copy_force_complete_is_the_point_of_no_return(conductor):
    """Post-copy cannot be rolled back: the switch-over is recorded before it starts, so a
    failure after it leaves the guest where it went (ERROR there), never migrated back."""
    uuid = two_hosts(conductor)
    conductor.rt.faults.arm("live_migration:execute:fail:after")
    _, t, out = _migrate_stalled(conductor, uuid, post_copy=True)
    with conductor.db.session() as s:
        live_migration.request(s, "vm1", "force_complete")
    t.join(30)
    assert out["status"].state == operations.REVERTED
    inst = instance(conductor, uuid)
    assert (inst.host, inst.vm_state, inst.held_by) == ("h2", "error", None)
    assert conductor.rt.driver_for("h2").inventory().guests == (uuid,)
    assert conductor.rt.driver_for("h1").inventory().guests == ()


@sqlite_only
def test_an_abort_requested_before_the_migration_starts_is_honoured(conductor):
    uuid = two_hosts(conductor)
    before = world(conductor, uuid)
    op_id = conductor.submit("live_migration", "vm1", target_host="h2")
    with conductor.db.session() as s:
        live_migration.request(s, "vm1", "abort")
    status = conductor.run(op_id)
    assert status.state == operations.REVERTED and "aborted on request" in status.error
    assert world(conductor, uuid) == before
    assert progress_rows(conductor, op_id) == []


@sqlite_only
def test_requests_without_a_running_migration_are_refused(conductor):
    uuid = two_hosts(conductor)
    before = world(conductor, uuid)
    for what in ("abort", "force_complete"):
        with pytest.raises(InvalidRequest, match="vm1: no live migration is running"):
            with conductor.db.session() as s:
                live_migration.request(s, "vm1", what)
    with pytest.raises(NotFound, match="unknown instance 'nope'"):
        with conductor.db.session() as s:
            live_migration.request(s, "nope", "abort")
    op_id = conductor.submit("power_off", "vm1")
    with pytest.raises(InvalidRequest, match=f"operation {op_id} is a power_off"):
        with conductor.db.session() as s:
            live_migration.request(s, "vm1", "abort")
    assert conductor.run(op_id).state == operations.SUCCEEDED
    assert world(conductor, uuid)["claims"] == before["claims"]


@sqlite_only
@pytest.mark.parametrize(
    "params,error,match",
    [
        ({"target_host": "nope"}, NotFound, "unknown host 'nope'"),
        ({"target_host": "h1"}, InvalidRequest, "instance vm1 is already on h1: choose another host"),
        ({"target_host": "tiny"}, InsufficientCapacity, "host tiny lacks capacity"),
        ({}, InvalidRequest, "live_migration needs target_host"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(conductor, params, error, match):
    uuid = two_hosts(conductor)
    conductor.add_host("tiny", vcpus=1, ram_mb=512, disk_gb=1)
    before = world(conductor, uuid)
    with pytest.raises(error, match=match):
        conductor.submit("live_migration", "vm1", **params)
    assert world(conductor, uuid) == before


@sqlite_only
def test_a_stopped_instance_is_refused(conductor):
    two_hosts(conductor)
    assert conductor.run(conductor.submit("power_off", "vm1")).state == operations.SUCCEEDED
    with pytest.raises(InvalidState, match="it is stopped"):
        conductor.submit("live_migration", "vm1", target_host="h2")
