"""Operator repair: an operation whose revert failed is listed with what it
left behind; retry-revert re-runs the failed revert and every earlier one
(not taskflow's plain re-run, which would skip them); mark-reverted records
a manual cleanup."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from conductor import config, repair
from conductor.api import Conductor
from persistence import operations, operator_actions
from persistence.models import Claim, FlowLogEntry, Host, Instance
from tests.conftest import run_cli, write_conf
from tests.flows.test_spawn import assert_fully_reverted, spawn

REVERT_FAILS = ("power_on:execute:fail", "define_guest:revert:fail")


def _failed_spawn(c: Conductor) -> str:
    for f in REVERT_FAILS:
        c.rt.faults.arm(f)
    op_id, state = spawn(c)
    assert state == operations.FAILED
    return op_id


def _annotations(c: Conductor, op_id: str) -> list[FlowLogEntry]:
    with c.db.session() as s:
        return s.scalars(
            sa.select(FlowLogEntry).where(
                FlowLogEntry.flow_detail_uuid == op_id,
                FlowLogEntry.step == "(flow)",
                FlowLogEntry.state.in_((operator_actions.REVERT_RETRIED, operator_actions.MARKED_REVERTED)),
            )
        ).all()


def test_failed_revert_is_listed_with_what_it_left_behind(conductor):
    op_id = _failed_spawn(conductor)
    (item,) = repair.needing_repair(conductor)
    assert item.op.id == op_id
    left = {lb.step: lb for lb in item.left_behind}
    assert left["define_guest"].state == "REVERT_FAILURE"
    assert "injected failure at step define_guest during revert" in left["define_guest"].error
    # Everything before the failed revert is still there, and says what it names.
    assert {"take_hold", "claim_resources", "create_root_disk", "plug_vif_0"} <= set(left)
    assert "power_on" not in left  # its revert ran
    assert left["create_root_disk"].resources["host"] == "h1"
    assert left["create_root_disk"].resources["disk"] == "root"
    assert left["plug_vif_0"].resources["vif"]
    assert item.left_behind[0].step == "define_guest"  # newest first: the order a revert undoes


def test_retry_revert_after_the_fix_reverts_every_earlier_step(conductor):
    op_id = _failed_spawn(conductor)
    assert not conductor.rt.driver_for("h1").inventory().empty
    conductor.rt.faults.clear()  # the "fix"
    status = repair.retry_revert(conductor, op_id, "alice@test")
    assert status.state == operations.REVERTED, status.error
    assert "injected failure at step power_on" in status.error  # the original cause stays
    assert_fully_reverted(conductor, op_id)  # disks, ports, claim, hold: all undone
    (note,) = _annotations(conductor, op_id)
    assert note.state == operator_actions.REVERT_RETRIED and "alice@test" in note.result
    assert repair.needing_repair(conductor) == []


def test_retry_revert_before_the_fix_fails_again_and_stays_listed(conductor):
    op_id = _failed_spawn(conductor)
    status = repair.retry_revert(conductor, op_id, "alice@test")
    assert status.state == operations.FAILED
    assert [i.op.id for i in repair.needing_repair(conductor)] == [op_id]
    conductor.rt.faults.clear()
    assert repair.retry_revert(conductor, op_id, "alice@test").state == operations.REVERTED
    assert_fully_reverted(conductor, op_id)


def test_mark_reverted_records_a_manual_cleanup(conductor):
    op_id = _failed_spawn(conductor)
    item = repair.mark_reverted(conductor, op_id, "bob@test", "undefined the guest with virsh")
    assert item.op.state == operations.REVERTED
    assert "cleaned up by hand, recorded by bob@test" in item.op.error
    assert any(lb.step == "define_guest" for lb in item.left_behind)
    with conductor.db.session() as s:
        inst = s.get(Instance, item.op.instance_uuid)
        assert (inst.held_by, inst.vm_state) == (None, "error")
        assert s.scalar(sa.select(sa.func.count()).select_from(Claim)) == 0
        assert s.get(Host, "h1").used_vcpus == 0
    (note,) = _annotations(conductor, op_id)
    assert note.state == operator_actions.MARKED_REVERTED
    assert "bob@test" in note.result and "virsh" in note.result
    # Only a record: what is on the hypervisor is the operator's to clean.
    assert conductor.rt.driver_for("h1").inventory().guests


def test_repair_refuses_operations_that_did_not_fail(conductor):
    op_id, state = spawn(conductor)
    assert state == operations.SUCCEEDED
    with pytest.raises(operator_actions.Refused, match="not FAILED"):
        repair.retry_revert(conductor, op_id, "x")
    with pytest.raises(operator_actions.Refused, match="not FAILED"):
        repair.mark_reverted(conductor, op_id, "x")
    with pytest.raises(operator_actions.Refused, match="unknown operation"):
        repair.retry_revert(conductor, "nope-nope", "x")


# -- real processes (each CLI call is a new process: kept to the ones that matter) --
def _conf(tmp_path, url: str, extra: str = ""):
    return write_conf(tmp_path / "computeflow.conf", tmp_path / "state", url, extra)


def _with_host(conf) -> None:
    with Conductor(config.load([str(conf)])) as c:
        c.add_host("h1", vcpus=4, ram_mb=8192, disk_gb=100)


def _leaks(conf) -> bool:
    with Conductor(config.load([str(conf)])) as c:
        leaks = c.leaks()
    return bool(leaks["claims"]) or any(inv.guests or inv.disks or inv.ports for inv in leaks["hosts"].values())


@pytest.mark.integration
def test_cli_repair_after_a_failed_revert(tmp_path, crash_db_url):
    conf = _conf(tmp_path, crash_db_url, f"[fake]\nfaults = {', '.join(REVERT_FAILS)}\n")
    _with_host(conf)
    r = run_cli(conf, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros", "--json")
    assert r.returncode == 3, r.stderr  # needs repair
    op_id = json.loads(r.stdout)["id"]

    listed = json.loads(run_cli(conf, "ops", "list", "--needs-repair", "--json").stdout)
    assert [o["id"] for o in listed] == [op_id]
    steps = {lb["step"]: lb for lb in listed[0]["left_behind"]}
    assert steps["define_guest"]["state"] == "REVERT_FAILURE"
    assert steps["create_root_disk"]["resources"]["host"] == "h1"
    assert _leaks(conf)

    conf = _conf(tmp_path, crash_db_url)  # the fix: the failing revert passes now
    r = run_cli(conf, "ops", "retry-revert", op_id[:8])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REVERTED" in r.stdout
    assert not _leaks(conf)
    r = run_cli(conf, "ops", "retry-revert", op_id)
    assert r.returncode == 2 and "not FAILED" in r.stderr


@pytest.mark.integration
def test_cli_hung_call_then_retry_revert_from_another_process(tmp_path, crash_db_url):
    """A call hung past step_timeout: its process cannot revert the step under
    it (FAILED); a new process, where the abandoned call does not exist,
    reverts everything."""
    conf = _conf(tmp_path, crash_db_url, "step_timeout = 3\n[fake]\nfaults = power_on:execute:hang\n")
    _with_host(conf)
    r = run_cli(conf, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros", "--json")
    assert r.returncode == 3, r.stderr  # needs repair
    op = json.loads(r.stdout)
    assert op["state"] == "FAILED"
    r = run_cli(conf, "ops", "retry-revert", op["id"], "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["state"] == "REVERTED"
    assert not _leaks(conf)


@pytest.mark.integration
def test_cli_mark_reverted(tmp_path, crash_db_url):
    conf = _conf(tmp_path, crash_db_url, f"[fake]\nfaults = {', '.join(REVERT_FAILS)}\n")
    _with_host(conf)
    op_id = json.loads(run_cli(conf, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros", "--json").stdout)[
        "id"
    ]
    r = run_cli(conf, "ops", "mark-reverted", op_id, "--note", "virsh undefine")
    assert r.returncode == 0, r.stderr
    assert "marked REVERTED" in r.stdout and "define_guest" in r.stdout
    with Conductor(config.load([str(conf)])) as c, c.db.session() as s:
        inst = s.get(Instance, operations.get(s, op_id).instance_uuid)
        assert (inst.held_by, inst.vm_state) == (None, "error")
