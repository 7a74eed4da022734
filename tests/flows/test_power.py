"""Power operations: each succeeds, and a failure at any step (before or after
its side effect) puts the instance and the guest back exactly as they were."""

from __future__ import annotations

import pytest

from flows import power
from flows.errors import InvalidState
from persistence import instances, operations
from tests.flows.test_spawn import spawn

# The operation that puts an active instance in the state each operation needs.
SETUP = {"power_on": "power_off", "unpause": "pause", "resume": "suspend", "restore": "soft_delete"}
OPS = list(power.TRANSITIONS)


def steps_of(op: str) -> list[str]:
    return [node.name for node, _ in power.build(operation=op).iter_nodes()]


def prepared(c, op: str) -> str:
    spawn(c)
    if op in SETUP:
        assert c.run(c.submit(SETUP[op], "vm1")).state == operations.SUCCEEDED
    return c.rt.driver_for("h1").list_instance_uuids()[0]


def snapshot(c, uuid: str) -> tuple:
    with c.db.session() as s:
        inst = instances.get(s, uuid)
        return inst.vm_state, inst.power_state, inst.held_by, c.rt.driver_for("h1").get_info(uuid).state


@pytest.mark.parametrize("op", OPS)
def test_operation_reaches_its_state(conductor, op):
    uuid = prepared(conductor, op)
    assert conductor.run(conductor.submit(op, "vm1")).state == operations.SUCCEEDED
    t = power.TRANSITIONS[op]
    vm_state, power_state, held_by, guest = snapshot(conductor, uuid)
    assert (vm_state, power_state, held_by) == (t.vm_state, t.power_state, None)
    assert guest.value == t.power_state


@pytest.mark.parametrize(
    "op,step,when", [(op, st, w) for op in OPS for st in steps_of(op) for w in ("before", "after")]
)
def test_failure_at_each_step_restores_the_prior_state(conductor, op, step, when):
    uuid = prepared(conductor, op)
    before = snapshot(conductor, uuid)
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    assert conductor.run(conductor.submit(op, "vm1")).state == operations.REVERTED
    after = snapshot(conductor, uuid)
    if (
        op == "reboot"
        and step == "mark_done"
        or op == "reboot"
        and (step, when) == ("reboot_guest", "after")
        or op == "reboot"
        and step == "wait_running"
    ):
        assert after[:3] == before[:3]  # a reboot cannot be undone; the record is restored
    else:
        assert after == before


def test_soft_reboot_falls_back_to_hard(conductor):
    uuid = prepared(conductor, "reboot")
    conductor.rt.driver_for("h1").simulate_unresponsive_guest(uuid)
    op_id = conductor.submit("reboot", "vm1")
    assert conductor.run(op_id).state == operations.SUCCEEDED
    from persistence import flowlog

    with conductor.db.session() as s:
        rows = flowlog.entries(s, op_id)
    assert any(r.step == "reboot_guest" and r.result == "'hard'" for r in rows)


def test_wrong_state_is_refused_naming_it(conductor):
    prepared(conductor, "pause")
    with pytest.raises(InvalidState, match="cannot unpause instance vm1: it is active"):
        conductor.submit("unpause", "vm1")
