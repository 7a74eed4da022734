"""Crash matrix: a real `computeflow spawn` process is SIGKILLed at every step
boundary (before and after the step's side effect), during execute and during
revert; a new `computeflow resume` process must converge to ACTIVE or to a
full revert with nothing leaked. On SQLite and PostgreSQL."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor
from persistence import instances, operations
from persistence.models import Claim, FlowLogEntry, Host, Operation
from tests.conftest import run_cli, write_conf
from tests.flows.test_spawn import SPAWN_STEPS
from tests.integration.crash import fault_conf, kill_then_resume

pytestmark = pytest.mark.integration

EXECUTE_CASES = [(s, w) for s in SPAWN_STEPS for w in ("before", "after")]
# mark_active fails, so every earlier step is reverted; kill inside each revert.
REVERT_CASES = [(s, w) for s in SPAWN_STEPS for w in ("before", "after")]


def _setup(tmp_path, url, faults: list[str]):
    """(crash, calm) configurations over one state directory, with host h1."""
    state = tmp_path / "state"
    crash = write_conf(tmp_path / "crash.conf", state, url, fault_conf(faults))
    calm = write_conf(tmp_path / "calm.conf", state, url)
    assert run_cli(calm, "hosts", "add", "h1", "--vcpus", "8", "--ram-mb", "16384", "--disk-gb", "100").returncode == 0
    return crash, calm


def _crash_then_resume(tmp_path, calm, url, faults: list[str]) -> str:
    kill_then_resume(
        tmp_path, calm, url, ["spawn", "vm1", "--flavor", "m1.small", "--image", "cirros"], faults, check_plan=True
    )
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            (op,) = s.scalars(sa.select(Operation)).all()
        return op.id


def _assert_converged(calm, op_id: str, expect: str) -> None:
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            op = operations.get(s, op_id)
            inst = instances.get(s, op.instance_uuid)
            host = s.get(Host, "h1")
            claims = s.scalar(sa.select(sa.func.count()).select_from(Claim))
            assert op.state == expect, op.error
            assert op.owner is None and inst.held_by is None
            if expect == operations.SUCCEEDED:
                assert (inst.vm_state, inst.power_state, inst.host) == ("active", "running", "h1")
                assert claims == 1 and host.used_vcpus == 1
            else:
                assert inst.vm_state == "error"
                assert claims == 0 and (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) == (0, 0, 0)
        inv = c.rt.driver_for("h1").inventory()
        if expect == operations.SUCCEEDED:
            assert (len(inv.guests), len(inv.disks), len(inv.ports)) == (1, 3, 1), inv
        else:
            assert inv.empty, inv


@pytest.mark.parametrize("step,when", EXECUTE_CASES)
def test_kill_during_execute_then_resume_finishes(tmp_path, crash_db_url, step, when):
    _, calm = _setup(tmp_path, crash_db_url, [])
    op_id = _crash_then_resume(tmp_path, calm, crash_db_url, [f"{step}:execute:kill:{when}"])
    _assert_converged(calm, op_id, operations.SUCCEEDED)


@pytest.mark.parametrize("step,when", REVERT_CASES)
def test_kill_during_revert_then_resume_reverts(tmp_path, crash_db_url, step, when):
    _, calm = _setup(tmp_path, crash_db_url, [])
    # The resumed process must not succeed by re-running mark_active: it keeps
    # reverting, because the flow was already REVERTING when it died.
    op_id = _crash_then_resume(tmp_path, calm, crash_db_url, ["mark_active:execute:fail", f"{step}:revert:kill:{when}"])
    _assert_converged(calm, op_id, operations.REVERTED)


def _runs(calm, op_id: str) -> dict[tuple[str, str], int]:
    """How many flow-log rows each (step, state) has."""
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            rows = s.execute(
                sa.select(FlowLogEntry.step, FlowLogEntry.state, sa.func.count())
                .where(FlowLogEntry.flow_detail_uuid == op_id)
                .group_by(FlowLogEntry.step, FlowLogEntry.state)
            ).all()
    return {(step, state): n for step, state, n in rows}


def _only_operation(calm) -> str:
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            return s.scalars(sa.select(Operation.id)).one()


@pytest.mark.parametrize("step", ["claim_resources", "define_guest", "mark_active"])
def test_a_finished_step_is_durable_before_the_next_one_starts(tmp_path, crash_db_url, step):
    """The backend defers a step's SUCCESS to the next step's RUNNING commit:
    killed at the very start of the next step, the SUCCESS is on disk, and the
    resumed run does not execute the finished step again."""
    before = SPAWN_STEPS[SPAWN_STEPS.index(step) - 1]
    crash, calm = _setup(tmp_path, crash_db_url, [f"{step}:execute:kill:before"])
    died = run_cli(crash, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros")
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr)
    op_id = _only_operation(calm)
    at_kill = _runs(calm, op_id)
    assert at_kill[(before, "SUCCESS")] == 1 and at_kill[(step, "RUNNING")] == 1, at_kill
    assert run_cli(calm, "resume", "--json").returncode == 0
    _assert_converged(calm, op_id, operations.SUCCEEDED)
    after = _runs(calm, op_id)
    assert after[(before, "RUNNING")] == 1 and after[(step, "RUNNING")] == 2, after


@pytest.mark.parametrize("step", ["take_hold", "define_guest", "power_on"])  # linear parts
def test_a_finished_revert_is_durable_before_the_next_one_starts(tmp_path, crash_db_url, step):
    """Same for reverts: REVERTED rides on the next step's REVERTING commit."""
    reverted_before = SPAWN_STEPS[SPAWN_STEPS.index(step) + 1]
    crash, calm = _setup(tmp_path, crash_db_url, ["mark_active:execute:fail", f"{step}:revert:kill:before"])
    died = run_cli(crash, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros")
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr)
    op_id = _only_operation(calm)
    at_kill = _runs(calm, op_id)
    assert at_kill[(reverted_before, "REVERTED")] == 1 and at_kill[(step, "REVERTING")] == 1, at_kill
    assert run_cli(calm, "resume", "--json").returncode in (0, 1)
    _assert_converged(calm, op_id, operations.REVERTED)
    after = _runs(calm, op_id)
    assert after[(reverted_before, "REVERTING")] == 1 and after[(step, "REVERTING")] == 2, after
