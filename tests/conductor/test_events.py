"""Hypervisor lifecycle events: a guest that stops by itself updates the record
(unless an operation holds it) and leaves an instance_events row."""

from __future__ import annotations

import pytest

from persistence import events, instances
from tests.flows.test_spawn import spawn

sqlite_and_pg = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@sqlite_and_pg
@pytest.mark.parametrize("crashed, power_state", [(False, "shutdown"), (True, "crashed")])
def test_guest_stopping_by_itself_is_recorded(conductor, crashed, power_state):
    spawn(conductor)
    drv = conductor.rt.driver_for("h1")
    (uuid,) = drv.list_instance_uuids()
    drv.simulate_guest_stopped(uuid, crashed=crashed)
    with conductor.db.session() as s:
        inst = instances.get(s, uuid)
        assert (inst.vm_state, inst.power_state) == ("stopped", power_state)
        assert [(e.host, e.power_state) for e in events.for_instance(s, uuid)] == [("h1", power_state)]
    assert conductor.run(conductor.submit("power_on", "vm1")).state == "SUCCEEDED"


@sqlite_and_pg
def test_event_on_a_held_instance_is_recorded_but_leaves_the_record(conductor):
    spawn(conductor)
    drv = conductor.rt.driver_for("h1")
    (uuid,) = drv.list_instance_uuids()
    op_id = conductor.submit("reboot", "vm1", hard=True)  # holds the instance
    drv.simulate_guest_stopped(uuid)
    with conductor.db.session() as s:
        inst = instances.get(s, uuid)
        assert (inst.vm_state, inst.power_state, inst.held_by) == ("active", "running", op_id)
        assert len(events.for_instance(s, uuid)) == 1
    assert conductor.run(op_id).state == "SUCCEEDED"
