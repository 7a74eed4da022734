"""Cancel: a pending operation ends without running a step; a running one
stops at its next step boundary (flagged by its owner's lease keeper, no
database read per step) and reverts; ended and forward-only running
operations refuse with a clear error."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conductor import cancel, config
from conductor.api import Conductor, SpawnRequest
from conductor.runner import LeaseKeeper
from flows.steps import cancellation
from persistence import flowlog, operations, operator_actions
from persistence.models import FlowLogEntry, Instance, Operation, Secret, utcnow
from tests.conftest import REPO, run_cli, write_conf
from tests.flows.test_spawn import assert_fully_reverted, spawn


def _submit(c: Conductor, name: str = "vm1", **kw) -> str:
    return c.submit_spawn(SpawnRequest(name=name, flavor="m1.small", image="cirros", **kw))


def _set(c: Conductor, op_id: str, **values) -> None:
    with c.db.session() as s:
        s.execute(sa.update(Operation).where(Operation.id == op_id).values(**values))


def _step_rows(c: Conductor, op_id: str) -> list[str]:
    with c.db.session() as s:
        return [st.step for st in flowlog.summarize(flowlog.entries(s, op_id))]


def test_pending_operation_without_a_live_owner_is_cancelled_without_running(conductor):
    op_id = _submit(conductor, admin_password="s3cret-pw")
    _set(conductor, op_id, owner=None, lease_expires_at=None)  # as a jobboard submission is
    res = cancel.cancel(conductor, op_id, "alice@test")
    assert res.ended and res.state == operations.REVERTED
    assert res.error == "cancelled by alice@test before it ran"
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        inst = s.get(Instance, op.instance_uuid)
        assert (inst.held_by, inst.vm_state) == (None, "error")  # as a reverted spawn
        assert s.scalar(sa.select(sa.func.count()).select_from(Secret)) == 0
        assert op.cancel_requested_by == "alice@test"
    assert _step_rows(conductor, op_id) == []  # not one step ran
    assert conductor.rt.driver_for("h1").inventory().empty


def test_pending_operation_on_an_instance_keeps_its_state(conductor):
    spawn(conductor)
    op_id = conductor.submit("power_off", "vm1")
    _set(conductor, op_id, owner=None, lease_expires_at=None)
    assert cancel.cancel(conductor, op_id, "alice@test").state == operations.REVERTED
    with conductor.db.session() as s:
        inst = s.get(Instance, operations.get(s, op_id).instance_uuid)
        assert (inst.held_by, inst.vm_state, inst.power_state) == (None, "active", "running")


def test_pending_operation_of_a_live_owner_stops_at_its_first_step(conductor):
    op_id = _submit(conductor)
    _set(conductor, op_id, owner="otherhost:1:1", lease_expires_at=utcnow() + dt.timedelta(seconds=60))
    res = cancel.cancel(conductor, op_id, "alice@test")
    assert not res.ended and res.outcome.owner == "otherhost:1:1"
    # The owner now runs it (here: we, once its lease lapsed): the request
    # was read when the run started, so its first step raises Cancelled.
    _set(conductor, op_id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))
    status = conductor.run(op_id)
    assert status.state == operations.REVERTED
    assert "cancelled by alice@test" in status.error
    assert _step_rows(conductor, op_id) == ["take_hold"]
    assert_fully_reverted(conductor, op_id)


def test_lease_keeper_flags_cancel_requests_of_the_operations_it_renews(conductor):
    op_id = _submit(conductor)
    keeper = LeaseKeeper(conductor.rt, "keeper-test:1:1", lease_seconds=0.3)
    _set(conductor, op_id, owner="keeper-test:1:1", state=operations.RUNNING)
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
    with keeper:
        keeper.track(op, op.epoch)
        assert cancellation.get(op_id).cancelled_by is None
        with conductor.db.session() as s:
            operator_actions.request_cancel(s, op_id, "alice@test")
        deadline = time.monotonic() + 10
        while cancellation.get(op_id).cancelled_by is None:
            assert time.monotonic() < deadline, "the keeper never flagged the request"
            time.sleep(0.02)
        with pytest.raises(cancellation.Cancelled, match="cancelled by alice@test"):
            cancellation.check(op_id)
        keeper.untrack(op_id)
    assert cancellation.get(op_id) is None


def test_ended_operation_cannot_be_cancelled(conductor):
    op_id, _ = spawn(conductor)
    with pytest.raises(operator_actions.Refused, match="already ended SUCCEEDED"):
        cancel.cancel(conductor, op_id, "alice@test")
    with pytest.raises(operator_actions.Refused, match="unknown operation"):
        cancel.cancel(conductor, "no-such-op", "alice@test")


def test_running_destroy_is_forward_only(conductor):
    spawn(conductor)
    op_id = conductor.submit_destroy("vm1")
    _set(conductor, op_id, state=operations.RUNNING)
    with pytest.raises(operator_actions.Refused, match="forward-only and already running"):
        cancel.cancel(conductor, op_id, "alice@test")
    with conductor.db.session() as s:
        assert operations.get(s, op_id).cancel_requested_by is None


@pytest.mark.parametrize("kind", ["confirm_resize", "revert_resize"])
def test_running_confirm_or_revert_of_a_resize_is_forward_only(conductor, kind):
    """Forward-only is a field of the catalogue: a revert-resize cancelled
    half-way would leave the destination destroyed and the source not back."""
    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    spawn(conductor)
    assert (
        conductor.run(conductor.submit("resize", "vm1", flavor="m1.large", target_host="h2")).state
        == operations.SUCCEEDED
    )
    op_id = conductor.submit(kind, "vm1")
    _set(conductor, op_id, state=operations.RUNNING)
    with pytest.raises(operator_actions.Refused, match="forward-only and already running"):
        cancel.cancel(conductor, op_id, "alice@test")
    _set(conductor, op_id, state=operations.PENDING)
    assert conductor.run(op_id).state == operations.SUCCEEDED


def test_cancel_wait_that_expires_exits_non_zero(conductor, conf_file):
    """The owner (on another machine, lease valid) does not stop in time."""
    from persistence.models import utcnow

    spawn(conductor)
    op_id = conductor.submit("reboot", "vm1")
    _set(
        conductor,
        op_id,
        state=operations.RUNNING,
        owner="elsewhere:1:1",
        lease_expires_at=utcnow() + dt.timedelta(hours=1),
    )
    out = run_cli(conf_file, "cancel", op_id, "--wait", "0.3")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "still RUNNING after --wait 0.3 s" in out.stdout


# -- real processes --------------------------------------------------------------
def _conf(tmp_path, url: str, extra: str = ""):
    return write_conf(tmp_path / "computeflow.conf", tmp_path / "state", url, extra)


@pytest.mark.integration
def test_cli_cancel_of_a_running_spawn_reverts_it(tmp_path, crash_db_url):
    """A `computeflow spawn` process waits in wait_vif_plugged (no events, not
    fatal); a cancel from another process (the API's call: the CLI's own start
    takes seconds on a loaded machine) records the request, the spawn's lease
    keeper (every lease_seconds/3 = 1 s) flags it, the next step raises
    Cancelled and everything is reverted."""
    conf = _conf(
        tmp_path,
        crash_db_url,
        "lease_seconds = 3\n[DEFAULT]\nvif_plugging_timeout = 10\nvif_plugging_is_fatal = false\n"
        "[fake]\ndeliver_vif_events = false\n",
    )
    with Conductor(config.load([str(conf)])) as c:
        c.add_host("h1", vcpus=4, ram_mb=8192, disk_gb=100)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conductor.cli",
                "--config-file",
                str(conf),
                "spawn",
                "vm1",
                "--flavor",
                "m1.small",
                "--image",
                "cirros",
                "--json",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            op_id = None
            while op_id is None:
                assert time.monotonic() < deadline and proc.poll() is None, "spawn never waited"
                with c.db.session() as s:
                    op_id = s.scalar(
                        sa.select(FlowLogEntry.flow_detail_uuid).where(
                            FlowLogEntry.step == "wait_vif_plugged", FlowLogEntry.state == "RUNNING"
                        )
                    )
                time.sleep(0.05)
            res = cancel.cancel(c, op_id, "alice@test")
            assert not res.ended and res.outcome.owner  # its live owner stops it
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 1, err
        assert json.loads(out)["state"] == operations.REVERTED
        with c.db.session() as s:
            op = operations.get(s, op_id)
            assert "cancelled by alice@test" in op.error
            steps = {st.step: st for st in flowlog.summarize(flowlog.entries(s, op_id))}
        assert steps["wait_vif_plugged"].state == "REVERTED"
        assert "mark_active" not in steps and "power_on" not in steps
        assert_fully_reverted(c, op_id)

        r = run_cli(conf, "cancel", op_id)
        assert r.returncode == 2 and "already ended REVERTED" in r.stderr


@pytest.mark.integration
def test_cli_cancel_takes_over_from_a_dead_owner(tmp_path, crash_db_url):
    conf = _conf(tmp_path, crash_db_url, "[fake]\nfaults = power_on:execute:kill\n")
    with Conductor(config.load([str(conf)])) as c:
        c.add_host("h1", vcpus=4, ram_mb=8192, disk_gb=100)
    r = run_cli(conf, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros", "--json")
    assert r.returncode == -9  # SIGKILLed at power_on
    conf = _conf(tmp_path, crash_db_url)
    with Conductor(config.load([str(conf)])) as c:
        with c.db.session() as s:
            (op,) = operations.resumable(s)
        r = run_cli(conf, "cancel", op.id[:8])
        assert r.returncode == 0, r.stderr
        assert "REVERTED: Cancelled: cancelled by" in r.stdout
        assert_fully_reverted(c, op.id)


def test_api_handle_cancel_is_honoured_when_its_conductor_runs_it(conductor):
    handle = _submit(conductor)  # owned by this (live) conductor until it runs it
    outcome = handle.cancel()
    assert (outcome.done, outcome.state) == (False, operations.PENDING)
    status = conductor.run(handle)
    assert status.state == operations.REVERTED and status.error == "Cancelled: cancelled by api"
    assert _step_rows(conductor, handle) == ["take_hold"]
    assert_fully_reverted(conductor, handle)


def test_cancel_flagged_inside_a_forward_only_phase_is_ignored(conductor, caplog):
    spawn(conductor)
    op_id = conductor.submit_destroy("vm1")

    def cancel_in_forward_phase(ev):  # as if the request raced the phase's start
        if ev.step == "power_off" and ev.state == "SUCCESS":
            cancellation.request(op_id, "alice@test")

    status = conductor.run(op_id, on_event=cancel_in_forward_phase)
    assert status.state == operations.SUCCEEDED, status.error
    assert "cancel by alice@test ignored: its forward-only phase has started" in caplog.text
    assert conductor.rt.driver_for("h1").inventory().empty
    with conductor.db.session() as s:
        with pytest.raises(operator_actions.Refused, match="already ended"):
            operator_actions.request_cancel(s, op_id, "alice@test")
        assert operations.forward_phase_started(s, op_id, "retry_destroy_forward")
