"""Per-step deadlines and retries of transient driver errors.

A transient error is retried with exponential backoff and every attempt is a
flow-log row; a permanent one reverts at once; a hung call fails its step
and the operation reverts, the revert never racing the abandoned call.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor
from flows.steps.attempts import Policy
from flows.steps.guest import PowerOn
from persistence import flowlog, operations, operator_actions
from persistence.models import FlowLogEntry
from tests.conftest import write_conf
from tests.flows.test_spawn import assert_fully_reverted, spawn

RETRY_CONF = "step_retry_attempts = 3\nstep_retry_base_delay = 0.01\nstep_retry_max_delay = 0.02\n"


def _conductor(tmp_path, url: str, extra: str = RETRY_CONF) -> Conductor:
    conf = write_conf(tmp_path / "computeflow.conf", tmp_path / "state", url, extra)
    c = Conductor(config.load([str(conf)]))
    c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
    return c


@pytest.fixture
def retrying(tmp_path, db_url):
    c = _conductor(tmp_path, db_url)
    yield c
    c.close()


@pytest.fixture
def fast(tmp_path, crash_db_url):
    c = _conductor(tmp_path, crash_db_url)
    yield c
    c.rt.faults.release_hangs.set()  # let any abandoned call end
    c.close()


def _rows(c: Conductor, op_id: str, step: str) -> list[tuple[str, int]]:
    with c.db.session() as s:
        return [
            (r.state, r.attempt)
            for r in s.scalars(
                sa.select(FlowLogEntry)
                .where(FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step == step)
                .order_by(FlowLogEntry.id)
            )
        ]


def test_transient_errors_are_retried_and_every_attempt_is_logged(retrying):
    retrying.rt.faults.arm("power_on:execute:fail-transient-2")
    op_id, state = spawn(retrying)
    assert state == operations.SUCCEEDED
    rows = _rows(retrying, op_id, "power_on")
    assert [s for s, _ in rows] == ["RUNNING", "RETRYING", "RUNNING", "RETRYING", "RUNNING", "SUCCESS"]
    assert [a for s, a in rows if s in ("RUNNING", "RETRYING")] == [1, 1, 2, 2, 3]
    with retrying.db.session() as s:
        (power_on,) = [st for st in flowlog.summarize(flowlog.entries(s, op_id)) if st.step == "power_on"]
        retry_rows = s.scalars(
            sa.select(FlowLogEntry).where(FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.state == "RETRYING")
        ).all()
    assert power_on.attempts == 3 and power_on.state == "SUCCESS"
    assert all("InjectedTransientFault" in r.error and "attempt" in r.result for r in retry_rows)


def test_transient_errors_past_the_attempts_revert(fast):
    fast.rt.faults.arm("power_on:execute:fail-transient-5")
    op_id, state = spawn(fast)
    assert state == operations.REVERTED
    assert_fully_reverted(fast, op_id)
    assert [s for s, _ in _rows(fast, op_id, "power_on")].count("RUNNING") == 3
    with fast.db.session() as s:
        assert "injected transient failure" in operations.get(s, op_id).error


def test_permanent_error_reverts_at_once(fast):
    fast.rt.faults.arm("power_on:execute:fail")
    op_id, state = spawn(fast)
    assert state == operations.REVERTED
    assert_fully_reverted(fast, op_id)
    assert [s for s, _ in _rows(fast, op_id, "power_on")] == ["RUNNING", "FAILURE", "REVERTING", "REVERTED"]


def test_transient_revert_error_is_retried_too(fast):
    fast.rt.faults.arm("power_on:execute:fail")
    fast.rt.faults.arm("define_guest:revert:fail-transient-1")
    op_id, state = spawn(fast)
    assert state == operations.REVERTED
    assert_fully_reverted(fast, op_id)
    assert "RETRYING" in [s for s, _ in _rows(fast, op_id, "define_guest")]


def test_backoff_doubles_up_to_the_cap():
    p = Policy(timeout=0, attempts=6, base_delay=0.01, max_delay=0.05, outage_tolerance=0)
    assert [p.delay(n) for n in range(1, 6)] == [0.01, 0.02, 0.04, 0.05, 0.05]


def test_hung_call_fails_the_step_and_the_revert_waits_for_it(fast, monkeypatch):
    """The hung power_on is abandoned after its deadline; it completes late
    (released while the operation reverts); its revert waited for it and so
    undid the late power-on: nothing leaks."""
    monkeypatch.setattr(PowerOn, "step_timeout", 0.3)
    fast.rt.faults.arm("power_on:execute:hang")

    def release_on_failure(ev):
        if ev.step == "power_on" and ev.state == "FAILURE":
            fast.rt.faults.release_hangs.set()

    op_id = spawn_op(fast)
    t0 = time.monotonic()
    status = fast.run(op_id, on_event=release_on_failure)
    assert status.state == operations.REVERTED, status.error
    assert "did not finish its execute within 0.3s" in status.error
    assert time.monotonic() - t0 < 30
    assert_fully_reverted(fast, op_id)


def test_call_still_hung_at_revert_leaves_it_for_an_operator(fast, monkeypatch):
    monkeypatch.setattr(PowerOn, "step_timeout", 0.3)
    fast.rt.faults.arm("power_on:execute:hang")
    op_id = spawn_op(fast)
    status = fast.run(op_id)
    assert status.state == operations.FAILED
    with fast.db.session() as s:
        (power_on,) = [st for st in flowlog.summarize(flowlog.entries(s, op_id)) if st.step == "power_on"]
        assert operator_actions.failed_reverts(s, operations.get(s, op_id)) == ["power_on"]
    assert power_on.state == "REVERT_FAILURE" and "still running" in power_on.error
    # The step did not wait forever: the abandoned call is still there, hung.
    assert any(t.name == "power_on-execute" and t.is_alive() for t in threading.enumerate())


def spawn_op(c: Conductor) -> str:
    from conductor.api import SpawnRequest

    return c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))


def test_cancel_wakes_a_step_waiting_to_retry(tmp_path, sqlite_url):
    from flows.steps import cancellation
    from tests.conftest import clean

    clean(sqlite_url)
    c = _conductor(tmp_path, sqlite_url, "step_retry_attempts = 3\nstep_retry_base_delay = 60\n")
    try:
        c.rt.faults.arm("power_on:execute:fail-transient-2")
        op_id = spawn_op(c)

        def cancel_when_waiting():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if ("RETRYING", 1) in _rows(c, op_id, "power_on"):
                    cancellation.request(op_id, "alice@test")  # what the lease keeper does
                    return
                time.sleep(0.02)

        t = threading.Thread(target=cancel_when_waiting)
        t.start()
        t0 = time.monotonic()
        status = c.run(op_id)
        t.join()
        assert time.monotonic() - t0 < 30  # not the 60 s backoff
        assert status.state == operations.REVERTED and "cancelled by alice@test" in status.error
        assert_fully_reverted(c, op_id)
    finally:
        c.close()
