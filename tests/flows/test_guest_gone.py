"""An operation on an instance whose guest is gone from its host (undefined by
hand, lost with the host's disk) fails at its first driver call and reverts
cleanly: a step that only changes an existing guest cannot have created or
removed it, so its revert has nothing to undo. Before, those reverts raised
GuestNotFound too and the operation ended FAILED, needing repair for nothing
(issue 12, item 1: `rebuild` after a repaired resize)."""

from __future__ import annotations

import pytest

from persistence import instances, operations
from tests.flows.test_spawn import spawn

# Operations on an active instance whose steps act on the existing guest.
OPS = [
    ("rebuild", {"image": "debian-12"}),
    ("rescue", {}),
    ("pause", {}),
    ("suspend", {}),
    ("power_off", {}),
    ("reboot", {"hard": True}),
    ("snapshot", {"image_name": "s1"}),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("op,params", OPS, ids=[o for o, _ in OPS])
def test_an_operation_on_a_vanished_guest_reverts_without_repair(conductor, op, params):
    spawn(conductor)
    drv = conductor.rt.driver_for("h1")
    uuid = drv.list_instance_uuids()[0]
    drv.simulate_undefine_by_hand(uuid)
    status = conductor.run(conductor.submit(op, "vm1", **params))
    assert status.state == operations.REVERTED, status.error
    assert "GuestNotFound" in status.error and "revert failed" not in status.error
    with conductor.db.session() as s:
        inst = instances.get(s, uuid)  # as before it; `reconcile` reports the missing guest
        assert (inst.vm_state, inst.held_by) == ("active", None)
    assert drv.list_instance_uuids() == []
