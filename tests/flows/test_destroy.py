"""Destroy is forward-only: it retries forward, and never re-creates anything."""

from __future__ import annotations

import pytest

from flows.errors import InstanceLocked
from persistence import claims, instances, operations
from persistence.models import Host
from tests.flows.test_spawn import spawn


def test_destroy_removes_everything(conductor):
    spawn(conductor)
    op_id = conductor.submit_destroy("vm1")
    assert conductor.run(op_id).state == operations.SUCCEEDED
    with conductor.db.session() as s:
        inst = instances.get(s, operations.get(s, op_id).instance_uuid)
        assert (inst.vm_state, inst.held_by, inst.host) == ("deleted", None, None)
        assert claims.all_claims(s) == []
        assert s.get(Host, "h1").used_ram_mb == 0
        assert instances.find_live(s, "vm1") is None
    assert conductor.rt.driver_for("h1").inventory().empty


@pytest.mark.parametrize(
    "step",
    [
        "power_off",
        "undefine_guest",
        "unplug_vifs",
        "delete_instance_files",
        "remove_other_copies",
        "release_claims",
        "mark_deleted",
    ],
)
def test_transient_failure_is_retried_forward(conductor, step):
    spawn(conductor)
    conductor.rt.faults.arm(f"{step}:execute:fail-once")
    op_id = conductor.submit_destroy("vm1")
    assert conductor.run(op_id).state == operations.SUCCEEDED
    assert conductor.rt.driver_for("h1").inventory().empty
    with conductor.db.session() as s:
        from persistence import flowlog

        attempts = {st.step: st.attempts for st in flowlog.summarize(flowlog.entries(s, op_id))}
    assert attempts[step] == 2


def test_permanent_failure_never_recreates_and_leaves_error(conductor):
    spawn(conductor)
    conductor.rt.faults.arm("delete_instance_files:execute:fail")
    op_id = conductor.submit_destroy("vm1")
    assert conductor.run(op_id).state == operations.REVERTED
    inv = conductor.rt.driver_for("h1").inventory()
    assert inv.guests == () and inv.ports == ()  # what was destroyed stays destroyed
    with conductor.db.session() as s:
        inst = instances.find_live(s, "vm1")
        assert (inst.vm_state, inst.held_by) == ("error", None)
    conductor.rt.faults.clear()
    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert conductor.rt.driver_for("h1").inventory().empty


def test_second_operation_on_a_held_instance_is_refused(conductor):
    spawn(conductor)
    first = conductor.submit_destroy("vm1")
    with pytest.raises(InstanceLocked) as e:
        conductor.submit_destroy("vm1")
    assert first in str(e.value)
    assert conductor.run(first).state == operations.SUCCEEDED


def failed_resize_marked_reverted(conductor, name: str) -> None:
    """A resize of `name` (on h1) to h2 whose revert failed, then marked
    reverted by an operator: its guest exists only as the resize source copy."""
    from conductor import repair

    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    for f in ("finish_migration:execute:fail:after", "migrate_disk_and_power_off:revert:fail"):
        conductor.rt.faults.arm(f)
    op = conductor.submit("resize", name, flavor="m1.large", target_host="h2")
    assert conductor.run(op).state == operations.FAILED
    conductor.rt.faults.clear()
    repair.mark_reverted(conductor, op, "test")


def test_destroy_after_a_failed_resize_repaired_by_hand_leaves_nothing(conductor):
    """Destroy removes the resize source copy too."""
    spawn(conductor)
    failed_resize_marked_reverted(conductor, "vm1")
    assert not conductor.rt.driver_for("h1").inventory().empty  # the kept copy
    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    leaks = conductor.leaks()
    assert leaks["claims"] == [] and all(inv.empty for inv in leaks["hosts"].values()), leaks


def test_destroy_of_a_resize_stuck_in_error_removes_both_sides(conductor):
    """A confirm that failed for good leaves the instance in error with its
    copy on both hosts and both claims: destroy removes all of it."""
    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    spawn(conductor)
    assert (
        conductor.run(conductor.submit("resize", "vm1", flavor="m1.large", target_host="h2")).state
        == operations.SUCCEEDED
    )
    conductor.rt.faults.arm("confirm_migration:execute:fail")
    assert conductor.run(conductor.submit("confirm_resize", "vm1")).state == operations.REVERTED
    conductor.rt.faults.clear()
    with conductor.db.session() as s:
        assert instances.find_live(s, "vm1").vm_state == "error"
    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    leaks = conductor.leaks()
    assert leaks["claims"] == [] and all(inv.empty for inv in leaks["hosts"].values()), leaks
