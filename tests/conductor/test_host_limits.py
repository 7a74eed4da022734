"""Per-host limits (conductor/host_limits.py, persistence/host_slots.py):
bad settings refused, the line is first-come first-served, a queued
operation runs when a slot frees and shows that it waits, and the bound holds
under a burst on one service. With real processes (a killed holder, two
conductors): tests/integration/test_host_limits_processes.py."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from conductor import config, host_limits
from conductor.api import Conductor, SpawnRequest
from conductor.config import ConfigError
from persistence import host_slots, operations
from persistence.host_slots import Need
from persistence.models import FlowLogEntry, HostSlot, Operation, utcnow
from persistence.session import Database
from tests.conductor.test_jobboard import eventually
from tests.conftest import run_cli, write_conf

HANG = "define_guest:execute:hang"


def _conductor(tmp_path: Path, db_url: str, extra: str = "") -> Conductor:
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", db_url, extra)
    c = Conductor(config.load([str(conf)]))
    c.add_host("h1", vcpus=64, ram_mb=65536, disk_gb=1000)
    return c


def _op(c: Conductor, op_id: str) -> Operation:
    with c.db.session() as s:
        return s.get(Operation, op_id)


def _reached(c: Conductor, op_id: str, step: str) -> bool:
    with c.db.session() as s:
        return (
            s.scalar(
                sa.select(FlowLogEntry.id)
                .where(
                    FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step == step, FlowLogEntry.state == "RUNNING"
                )
                .limit(1)
            )
            is not None
        )


def _slot_rows(c: Conductor) -> list[tuple]:
    with c.db.session() as s:
        return s.execute(sa.select(HostSlot.operation_id, HostSlot.slot)).all()


# -- settings ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, message",
    [
        (
            "max_concurrent_per_host = teleport:1",
            "max_concurrent_per_host teleport:1: unknown operation kind 'teleport'",
        ),
        (
            "max_concurrent_per_host = snapshot:two",
            "max_concurrent_per_host snapshot:two: the limit must be a whole number >= 0",
        ),
        ("max_concurrent_per_host = snapshot:-1", "the limit must be a whole number >= 0"),
        ("max_concurrent_builds = -1", "[conductor] max_concurrent_builds = '-1'"),
        ("max_concurrent_live_migrations = one", "max_concurrent_live_migrations = 'one'"),
    ],
)
def test_bad_limits_are_refused_when_the_configuration_loads(tmp_path, line, message):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", "sqlite:///unused", line + "\n")
    with pytest.raises(ConfigError) as e:
        config.load([str(conf)])
    assert message in str(e.value)
    assert not (tmp_path / "state").exists()  # refused before anything was touched


def test_which_slots_each_operation_needs():
    limits = host_limits.HostLimits(builds=2, live_migrations=1, per_kind={"migrate": 3})

    def op(kind, state="PENDING", **params):
        return Operation(id="x", kind=kind, state=state, parameters=params)

    assert limits.needs(op("spawn", host="h1")) == [Need("h1", "builds", 2)]
    assert limits.needs(op("evacuate", host="down", dest_host="h2")) == [Need("h2", "builds", 2)]
    assert limits.needs(op("live_migration", host="h1", destination="h2")) == [
        Need("h1", "live_migrations", 1),
        Need("h2", "live_migrations", 1),
    ]
    assert limits.needs(op("migrate", host="h1", dest_host="h2")) == [
        Need("h1", "migrate", 3),
        Need("h2", "migrate", 3),
    ]
    assert limits.needs(op("reboot", host="h1")) == []
    assert limits.needs(op("spawn", state="REVERTING", host="h1")) == []  # undoing never waits
    cancelled = op("spawn", host="h1")
    cancelled.cancel_requested_by = "api"
    assert limits.needs(cancelled) == []
    unlimited = host_limits.HostLimits(builds=0, live_migrations=0)
    assert unlimited.needs(op("spawn", host="h1")) == []


# -- the line, in the database ------------------------------------------------------
def _ops(db: Database, n: int) -> list[str]:
    """n pending spawns on h1, submitted one millisecond apart."""
    ids, t0 = [], utcnow()
    with db.session() as s:
        for i in range(n):
            op_id = str(uuid.uuid4())
            operations.create(s, op_id, "spawn", None, {"host": "h1"}, 1, None, 30)
            s.flush()
            s.execute(
                sa.update(Operation).where(Operation.id == op_id).values(created_at=t0 + dt.timedelta(milliseconds=i))
            )
            ids.append(op_id)
    return ids


def _try(db: Database, op_id: str, limit: int) -> list:
    """What the runner does: ask; with room, own the operation and take the slot."""
    need = [Need("h1", "builds", limit)]
    with db.session() as s:
        op = s.get(Operation, op_id)
        ask = host_slots.request(s, op_id, op.created_at, need, grace=30)
        if not ask.waits:
            assert operations.take_ownership(s, op_id, "me", 30) is not None
            host_slots.take(s, op_id, ask)
    return ask.waits


def test_line_is_first_come_first_served_and_a_lapsed_slot_is_reclaimed(db_url):
    db = Database(db_url)
    try:
        first, second, third = _ops(db, 3)
        assert _try(db, first, 1) == []
        wait = _try(db, third, 1)
        assert [(w.held, w.ahead) for w in wait] == [(1, 0)]
        assert str(wait[0]) == "builds on h1: 1 of 1 taken"
        assert _try(db, second, 1)  # still taken
        with db.session() as s:  # the first ends: its slot no longer counts
            operations.mark(s, first, operations.SUCCEEDED)
            assert host_slots.holders(s, "h1", "builds") == []
        wait = _try(db, third, 1)  # the second was first in line
        assert [(w.held, w.ahead) for w in wait] == [(0, 1)]
        assert _try(db, second, 1) == []  # takes the number the first left behind
        with db.session() as s:
            assert host_slots.holders(s, "h1", "builds") == [second]
            assert s.get(HostSlot, (first, "h1", "builds")) is None  # its row went with it
            # The second's conductor dies: once its lease lapses its slot is free.
            s.execute(
                sa.update(Operation)
                .where(Operation.id == second)
                .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
            )
        assert _try(db, third, 1) == []
        with db.session() as s:
            assert host_slots.holders(s, "h1", "builds") == [third]
            # The orphan keeps its place in line for when it is resumed.
            assert s.get(HostSlot, (second, "h1", "builds")).slot is None
            assert host_limits.waiting(s, [second, third]) == {second: "waiting for a host slot: builds on h1"}
    finally:
        db.dispose()


# -- a conductor ----------------------------------------------------------------------
def test_an_operation_seen_ended_holds_no_slot(tmp_path, db_url, monkeypatch):
    """The slots leave in the outcome's own transaction: whoever sees the
    operation SUCCEEDED (a waiter, a test, another process) finds them free,
    not only once the run's last clean-up has come (under load, a test saw a
    SUCCEEDED spawn still holding its slot). That clean-up then only wakes
    this process's waiters: no second transaction per operation."""
    c = _conductor(tmp_path, db_url, "max_concurrent_builds = 1\n")
    seen: list[tuple[list[str], list[tuple]]] = []
    released: list[str] = []
    real = host_limits.SlotGate.announce_release

    def announce_after_looking(gate):  # the run's clean-up, once it ended
        with c.db.session() as s:
            states = list(s.scalars(sa.select(Operation.state)))
        seen.append((states, _slot_rows(c)))
        real(gate)

    monkeypatch.setattr(host_limits.SlotGate, "announce_release", announce_after_looking)
    monkeypatch.setattr(host_limits.SlotGate, "release", lambda gate, db, op_id, owner: released.append(op_id))
    try:
        op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
        assert op.wait(timeout=60).state == operations.SUCCEEDED
        assert seen == [([operations.SUCCEEDED], [])]
        assert released == []
    finally:
        c.close()


def test_queued_spawn_waits_visibly_and_runs_when_the_slot_frees(tmp_path, db_url):
    c = _conductor(tmp_path, db_url, "max_concurrent_builds = 1\n")
    runs: list[threading.Thread] = []
    try:
        c.rt.faults.arm(HANG)
        first = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
        runs.append(threading.Thread(target=first.wait))
        runs[-1].start()
        eventually(lambda: c.rt.faults.hanging == 1, 30, "the first spawn to hang")
        assert _reached(c, first, "define_guest")
        c.rt.faults.clear()  # the next spawn would not hang: only the slot holds it
        second = c.submit_spawn(SpawnRequest(name="vm2", flavor="m1.tiny", image="cirros"))
        runs.append(threading.Thread(target=second.wait))
        runs[-1].start()
        eventually(lambda: (second, None) in _slot_rows(c), 30, "the second to queue")
        assert _op(c, second).state == operations.PENDING
        shown = run_cli(tmp_path / "c.conf", "ops", "show", second)
        assert "state     PENDING (waiting for a host slot: builds on h1)" in shown.stdout, shown
        listed = run_cli(tmp_path / "c.conf", "ops", "list")
        assert "PENDING (waiting for a host slot: builds on h1)" in listed.stdout, listed

        c.rt.faults.release_hangs.set()
        for t in runs:
            t.join(60)
        a, b = _op(c, first), _op(c, second)
        assert (a.state, b.state) == (operations.SUCCEEDED, operations.SUCCEEDED), (a.error, b.error)
        assert b.started_at >= a.finished_at  # it ran after, not beside
        assert _slot_rows(c) == []  # both left their slots
    finally:
        c.rt.faults.release_hangs.set()
        for t in runs:
            t.join(60)
        c.close()


def test_limit_holds_under_a_burst_on_one_service(tmp_path, postgresql_url, redis_url):
    """A burst of spawns over two hosts on one conductor service (Redis +
    PostgreSQL) with room for more in flight than the limit: per host, never
    more than the limit ran at once, and every spawn ended (none starved)."""
    from conductor import boards
    from conductor.service import ConductorService
    from tests.conftest import clean

    clean(postgresql_url)
    limit, count = 3, 30
    c = _conductor(
        tmp_path,
        postgresql_url,
        f"max_concurrent_builds = {limit}\nmax_operations = 12\njobboard = {redis_url}\n"
        "claim_expiry = 5\npoll_interval = 0.05\n[fake]\nlatency = define_guest:0.05\n",
    )
    c.add_host("h2", vcpus=64, ram_mb=65536, disk_gb=1000)
    svc = ConductorService(c, boards.open_board(c.conf, c.owner, c.db))
    t = threading.Thread(target=svc.serve)
    t.start()
    try:
        handles = [
            c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros", host=f"h{1 + i % 2}"))
            for i in range(count)
        ]
        states = {h: h.wait(timeout=120).state for h in handles}
        assert set(states.values()) == {operations.SUCCEEDED}
        with c.db.session() as s:
            peak = host_limits.HostLimits.from_conf(c.conf).peak(s, list(handles))
        assert set(peak) == {("builds", "h1"), ("builds", "h2")}
        assert max(peak.values()) <= limit, peak
        assert _slot_rows(c) == []
    finally:
        svc.stop()
        t.join(30)
        c.close()
