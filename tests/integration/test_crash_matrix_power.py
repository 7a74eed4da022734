"""Crash matrix for the power operations: a real process running the operation
is SIGKILLed at every step boundary, during execute and during revert; a new
`computeflow resume` process converges to the target state or back to the
prior one. On SQLite and PostgreSQL."""

from __future__ import annotations


import pytest

from conductor import config
from conductor.api import Conductor, SpawnRequest
from flows import catalog, power
from persistence import instances, operations
from tests.conftest import write_conf
from tests.integration.crash import alternating, kill_then_resume
from tests.flows.test_power import SETUP, steps_of

pytestmark = pytest.mark.integration

CASES = [(op, st, w) for op in power.TRANSITIONS for st in steps_of(op) for w in ("before", "after")]


def _prepare(tmp_path, url, op: str):
    state = tmp_path / "state"
    calm = write_conf(tmp_path / "calm.conf", state, url)
    with Conductor(config.load([str(calm)])) as c:
        c.add_host("h1", vcpus=8, ram_mb=16384, disk_gb=100)
        assert c.run(c.submit_spawn(SpawnRequest("vm1", "m1.tiny", "cirros"))).state == "SUCCEEDED"
        if op in SETUP:
            assert c.run(c.submit(SETUP[op], "vm1")).state == "SUCCEEDED"
        with c.db.session() as s:
            inst = instances.find_live(s, "vm1")
            before = (inst.vm_state, inst.power_state)
        guest_before = c.rt.driver_for("h1").get_info(inst.uuid).state.value
    return state, calm, before, guest_before


def _crash_and_resume(tmp_path, state, calm, url, op: str, faults: list[str]) -> tuple:
    kill_then_resume(tmp_path, calm, url, [catalog.get(op).verb, "vm1"], faults)
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            inst = instances.find_live(s, "vm1")
            (op_row,) = operations.listing(s, limit=1)
            result = (op_row.state, inst.vm_state, inst.power_state, inst.held_by)
        return result, c.rt.driver_for("h1").get_info(inst.uuid).state.value


@pytest.mark.parametrize("op,step,when,crash_db_url", alternating(CASES), indirect=["crash_db_url"])
def test_kill_during_execute_converges_forward(tmp_path, crash_db_url, op, step, when):
    state, calm, _, _ = _prepare(tmp_path, crash_db_url, op)
    (op_state, vm_state, power_state, held), guest = _crash_and_resume(
        tmp_path, state, calm, crash_db_url, op, [f"{step}:execute:kill:{when}"]
    )
    t = power.TRANSITIONS[op]
    assert (op_state, vm_state, power_state, held, guest) == (
        "SUCCEEDED",
        t.vm_state,
        t.power_state,
        None,
        t.power_state,
    )


@pytest.mark.parametrize("op,step,when,crash_db_url", alternating(CASES), indirect=["crash_db_url"])
def test_kill_during_revert_converges_back(tmp_path, crash_db_url, op, step, when):
    state, calm, before, guest_before = _prepare(tmp_path, crash_db_url, op)
    (op_state, vm_state, power_state, held), guest = _crash_and_resume(
        tmp_path, state, calm, crash_db_url, op, ["mark_done:execute:fail:after", f"{step}:revert:kill:{when}"]
    )
    assert (op_state, vm_state, power_state, held) == ("REVERTED", *before, None)
    if op != "reboot":  # a reboot is not undone; everything else is
        assert guest == guest_before
