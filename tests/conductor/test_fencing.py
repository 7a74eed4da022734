"""Fencing: once another conductor has taken an operation over, the former
owner persists nothing more, and the new owner finishes the operation.

The take-over happens *inside* a step of the first runner (the situation of a
conductor paused mid-step past its lease), so the first write it attempts
after its side effect is the one that must be refused.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor, SpawnRequest
from conductor.runner import LostOwnership
from drivers.fake import FakeDriver
from persistence import operations
from persistence.models import FlowLogEntry, Operation
from persistence.taskflow_backend import Fenced


def _log(c: Conductor, op_id: str) -> list[tuple[str, str, int | None]]:
    with c.db.session() as s:
        rows = s.execute(
            sa.select(FlowLogEntry.step, FlowLogEntry.state, FlowLogEntry.epoch)
            .where(FlowLogEntry.flow_detail_uuid == op_id)
            .order_by(FlowLogEntry.id)
        )
        return [tuple(r) for r in rows]


@pytest.fixture
def second(conf_file):
    c = Conductor(config.load([str(conf_file)], overrides={("conductor", "name"): "conductor-b"}))
    yield c
    c.close()


def test_taken_over_mid_step_writes_nothing_more_and_new_owner_finishes(conductor, second, monkeypatch):
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))
    real_power_on = FakeDriver.power_on
    taken: list[int] = []

    def power_on_then_lose_the_claim(self, instance_uuid):
        real_power_on(self, instance_uuid)  # the side effect happens...
        if not taken:  # ...then another conductor takes over (our lease "expired")
            with second.db.session() as s:
                epoch = operations.take_ownership(s, op_id, second.owner, 30, dead_owners=(conductor.owner,))
            taken.append(epoch)

    monkeypatch.setattr(FakeDriver, "power_on", power_on_then_lose_the_claim)
    with pytest.raises(LostOwnership):
        conductor.run(op_id)

    first_epoch, new_epoch = taken[0] - 1, taken[0]
    log = _log(conductor, op_id)
    stale = [row for row in log if row[2] == first_epoch]
    # The first owner's last persisted transition is power_on RUNNING: its
    # SUCCESS (and anything after) was refused.
    assert stale[-1][:2] == ("power_on", "RUNNING")
    assert all(row[2] in (first_epoch, None) for row in log)
    with conductor.db.session() as s:
        op = s.get(Operation, op_id)
        assert (op.owner, op.epoch, op.state) == (second.owner, new_epoch, operations.RUNNING)

    monkeypatch.setattr(FakeDriver, "power_on", real_power_on)
    final = second.runner.run(op_id)
    assert final.state == operations.SUCCEEDED
    assert final.epoch == new_epoch + 1  # running it is another take
    after = _log(second, op_id)[len(log) :]
    assert after and all(row[2] == final.epoch for row in after)
    # The interrupted power_on ran again under the new owner (idempotent), then the rest.
    assert after[0] == ("power_on", "RUNNING", final.epoch)
    assert ("power_on", "SUCCESS", final.epoch) in after


def test_stale_owner_cannot_record_an_outcome(conductor, second):
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))
    with conductor.db.session() as s:
        mine = operations.take_ownership(s, op_id, conductor.owner, 30)
    with second.db.session() as s:
        theirs = operations.take_ownership(s, op_id, second.owner, 30, dead_owners=(conductor.owner,))
    assert theirs == mine + 1
    with conductor.db.session() as s:
        assert not operations.mark(s, op_id, operations.FAILED, owner=conductor.owner, epoch=mine)
    with conductor.db.session() as s:
        assert s.get(Operation, op_id).state == operations.PENDING


def test_backend_refuses_writes_under_a_superseded_epoch(conductor, second):
    """Atom and flow writes, on every database's write path."""
    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
    from flows import catalog
    from taskflow import engines, states

    runner = conductor.runner
    flow_detail, book = runner._flow_detail(op, catalog.get(op.kind))
    engine = engines.load(
        engines.flow_from_detail(flow_detail),
        flow_detail=flow_detail,
        book=book,
        backend=runner.backend,
        store={"operation_id": op_id, **op.parameters},
    )
    engine.compile()
    engine.prepare()  # atoms now exist and are remembered by the backend
    with second.db.session() as s:
        epoch = operations.take_ownership(s, op_id, second.owner, 30, dead_owners=(conductor.owner,))
    runner.backend.fence(op_id, epoch - 1)  # what a paused former owner still believes
    conn = runner.backend.get_connection()
    atom = next(ad for ad in flow_detail if ad.name == "take_hold")
    atom.state = states.RUNNING
    try:
        with pytest.raises(Fenced):
            conn.update_atom_details(atom)
        flow_detail.state = states.RUNNING
        with pytest.raises(Fenced):
            conn.update_flow_details(flow_detail)
        runner.backend.fence(op_id, epoch)  # the current owner's writes go through
        conn.update_atom_details(atom)
    finally:
        runner.backend.unfence(op_id)
    assert [(step, state) for step, state, _ in _log(conductor, op_id)] == [(atom.name, "RUNNING")]
    assert _log(conductor, op_id)[0][2] == epoch


def test_progress_rows_are_fenced_and_stamped_with_the_epoch(conductor, second):
    from persistence import progress

    op_id = conductor.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))
    with conductor.db.session() as s:
        mine = operations.take_ownership(s, op_id, conductor.owner, 30)
    with conductor.db.session() as s:
        assert progress.add(s, op_id, "live_migration", progress.PROGRESS, "10%", epoch=mine)
    with second.db.session() as s:
        operations.take_ownership(s, op_id, second.owner, 30, dead_owners=(conductor.owner,))
    with conductor.db.session() as s:
        assert not progress.add(s, op_id, "live_migration", progress.PROGRESS, "20%", epoch=mine)
    assert _log(conductor, op_id) == [("live_migration", "PROGRESS", mine)]
