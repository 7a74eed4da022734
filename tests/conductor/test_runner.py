"""The runner's guards: versions, finished flows, ownership and leases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import sqlalchemy as sa

from conductor.api import SpawnRequest
from flows import catalog
from flows.errors import InstanceLocked
from persistence import claims, operations
from persistence.models import FlowLogEntry, Host, Operation, utcnow
from tests.flows.test_spawn import spawn


def _flow_log_count(c, op_id: str) -> int:
    with c.db.session() as s:
        return s.scalar(
            sa.select(sa.func.count()).select_from(FlowLogEntry).where(FlowLogEntry.flow_detail_uuid == op_id)
        )


def test_older_flow_version_is_refused_not_run(conductor, monkeypatch):
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    monkeypatch.setitem(catalog.CATALOG, "spawn", dataclasses.replace(catalog.CATALOG["spawn"], version=2))
    status = conductor.run(op_id)
    assert status.state == operations.FAILED
    assert "flow version 1" in status.error and "only has version 2" in status.error
    assert _flow_log_count(conductor, op_id) == 0
    assert conductor.rt.driver_for("h1").inventory().empty


def _reverted_spawn(conductor, **then: object) -> tuple[str, int]:
    """A spawn that failed and reverted, its row then set to `then`; returns
    its id and how many flow-log rows it has."""
    conductor.rt.faults.arm("power_on:execute:fail")
    op_id, state = spawn(conductor)
    assert state == operations.REVERTED
    conductor.rt.faults.clear()
    with conductor.db.session() as s:
        s.execute(sa.update(Operation).where(Operation.id == op_id).values(**then))
    return op_id, _flow_log_count(conductor, op_id)


def test_flow_that_already_reverted_is_recorded_not_rerun(conductor):
    # The conductor "died" after the revert, before recording the outcome.
    op_id, logged = _reverted_spawn(
        conductor,
        state=operations.REVERTING,
        owner="elsewhere:1:1",
        lease_expires_at=utcnow() - dt.timedelta(seconds=1),
    )
    (resumed,) = conductor.resume()
    assert resumed.state == operations.REVERTED
    assert _flow_log_count(conductor, op_id) == logged  # not one step ran again
    assert conductor.rt.driver_for("h1").inventory().empty


def test_resume_leaves_operations_of_live_owners_alone(conductor):
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    with conductor.db.session() as s:
        s.execute(
            sa.update(Operation)
            .where(Operation.id == op_id)
            .values(owner="otherhost:1:1", lease_expires_at=utcnow() + dt.timedelta(seconds=60))
        )
    assert conductor.resume() == []
    assert conductor.status(op_id).state == operations.PENDING


def test_resume_takes_over_an_expired_lease(conductor):
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    with conductor.db.session() as s:
        s.execute(
            sa.update(Operation)
            .where(Operation.id == op_id)
            .values(owner="otherhost:1:1", lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    (resumed,) = conductor.resume()
    assert resumed.state == operations.SUCCEEDED


def test_concurrent_operations_on_one_instance_have_one_holder(conductor):
    spawn(conductor)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def submit():
        barrier.wait()
        try:
            results.append(conductor.submit_destroy("vm1"))
        except InstanceLocked as e:
            results.append(e)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(r.holder == winners[0] for r in results if isinstance(r, InstanceLocked))


def test_concurrent_claims_never_overcommit(conductor):
    barrier = threading.Barrier(12)
    granted: list[bool] = []

    def claim(i: int):
        barrier.wait()
        for attempt in range(5):
            try:
                with conductor.db.session() as s:
                    granted.append(claims.claim(s, f"op-{i}", "h1", f"inst-{i}", 3, 1024, 10))
                return
            except sa.exc.OperationalError:  # MariaDB deadlock victim: retry, as the step would
                if attempt == 4:
                    raise

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 5  # 16 vCPUs / 3 per claim
    with conductor.db.session() as s:
        h = s.get(Host, "h1")
        assert h.used_vcpus == 15 <= h.vcpus
        assert len(claims.all_claims(s)) == 5


def test_taking_a_pending_operation_starts_it_in_the_same_statement(conductor):
    """On every database (MariaDB evaluates SET left to right): the take makes a
    PENDING operation RUNNING with its start time and flow detail, refreshes the
    session's copy, and leaves both alone on a later take."""
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        epoch = operations.take_ownership(s, op_id, conductor.owner, 30, start=True)
        assert epoch is not None
        assert (op.state, op.owner, op.epoch, op.flow_detail_uuid) == (
            operations.RUNNING,
            conductor.owner,
            epoch,
            op_id,
        )
        started = op.started_at
        assert started is not None
    with conductor.db.session() as s:
        s.execute(sa.update(Operation).where(Operation.id == op_id).values(state=operations.REVERTING))
    with conductor.db.session() as s:
        again = operations.take_ownership(s, op_id, conductor.owner, 30, start=True)
        op = operations.get(s, op_id)
        assert again == epoch + 1
        assert (op.state, op.started_at) == (operations.REVERTING, started)


def test_a_first_run_uses_the_flow_detail_it_finds(conductor):
    """A PENDING operation's flow detail is created without a lookup; if one
    exists after all (an older version's crash between the two), that one runs:
    here it had ended REVERTED, so nothing runs again."""
    op_id, logged = _reverted_spawn(
        conductor, state=operations.PENDING, owner=None, lease_expires_at=None, started_at=None, finished_at=None
    )
    assert conductor.run(op_id).state == operations.REVERTED
    assert _flow_log_count(conductor, op_id) == logged
    assert conductor.rt.driver_for("h1").inventory().empty
