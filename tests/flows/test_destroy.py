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


@pytest.mark.parametrize("step", ["power_off", "undefine_guest", "unplug_vifs",
                                  "delete_instance_files", "release_claims", "mark_deleted"])
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
