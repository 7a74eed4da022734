"""With default options one conductor keeps hundreds of waiting operations in
flight, and waiting steps hold no database connection."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conductor import boards, config
from conductor.api import Conductor, SpawnRequest
from conductor.service import ConductorService
from drivers.faults import FaultPlan
from persistence import operations
from persistence.models import FlowLogEntry, Operation
from persistence.session import connection_bound
from tests.conftest import clean, write_conf

IN_FLIGHT = 100  # 25x the old max_operations; each spawn costs ~80 ms of CPU
HOSTS = 10  # the default max_concurrent_builds (10 per host) lets all 100 build at once
WAIT_STEP = "wait_vif_plugged"


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def held(tmp_path, postgresql_url) -> Iterator[Conductor]:
    """A conductor (default options but the test database) whose spawns all
    hang in their network wait until the test releases them."""
    clean(postgresql_url)
    conf = config.load([str(write_conf(tmp_path / "c.conf", tmp_path / "state", postgresql_url))])
    c = Conductor(conf, faults=FaultPlan([f"{WAIT_STEP}:execute:hang"]))
    for h in range(HOSTS):
        c.add_host(f"h{h}", vcpus=10**5, ram_mb=10**8, disk_gb=10**6)
    try:
        yield c
    finally:
        c.rt.faults.release_hangs.set()
        c.close()


def _waiting(c: Conductor) -> int:
    with c.db.session() as s:
        return s.scalar(
            sa.select(sa.func.count(sa.distinct(FlowLogEntry.flow_detail_uuid))).where(
                FlowLogEntry.step == WAIT_STEP, FlowLogEntry.state == "RUNNING"
            )
        )


def _connections(c: Conductor) -> int:
    with c.db.session() as s:
        return s.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"))


@contextlib.contextmanager
def _serving(c: Conductor, count: int) -> Iterator[tuple[list, ConductorService, int]]:
    """`count` spawns spread over the hosts, then a service running them; on
    leaving, the service stopped and its thread ended. Yields the operations,
    the service and the number of threads before it started serving."""
    ids = [
        c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros", host=f"h{i % HOSTS}"))
        for i in range(count)
    ]
    svc = ConductorService(c, boards.open_board(c.conf, c.owner, c.db))
    before = threading.active_count()
    serving = threading.Thread(target=svc.serve)
    serving.start()
    try:
        yield ids, svc, before
    finally:
        svc.stop()
        serving.join(60)
    assert not serving.is_alive()


def _release_and_expect_success(c: Conductor, ids: list, timeout: float) -> None:
    c.rt.faults.release_hangs.set()
    for op_id in ids:
        assert op_id.wait(timeout=timeout).state == operations.SUCCEEDED


def test_hundreds_of_waiting_operations_are_in_flight_at_once_with_default_options(held):
    assert held.conf.conductor.max_operations >= 1000  # the defaults under test
    assert held.conf.conductor.max_concurrent_builds * HOSTS >= IN_FLIGHT
    with _serving(held, IN_FLIGHT) as (ids, _, _):
        # Every operation reaches its wait while none can get past it: all are in flight at once.
        _until(lambda: _waiting(held) == IN_FLIGHT, 240, f"{IN_FLIGHT} operations to wait")
        # A waiting step holds no pooled connection; the process stays within its pools.
        assert held.db.engine.pool.checkedout() <= 1  # at most the loop's own claim query
        assert _connections(held) <= connection_bound(held.conf.database.pool_size, "postgresql")
        _release_and_expect_success(held, ids, 240)
    with held.db.session() as s:
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(Operation).where(Operation.state == operations.SUCCEEDED))
            == IN_FLIGHT
        )


STRUCTURE_IN_FLIGHT = 40


def test_a_waiting_step_costs_its_own_thread_and_a_deadline_entry_not_a_thread_waiting_on_it(held):
    """The structural property the 1,000-in-flight figures rest on
    (docs/scale-out.md): a step waiting in its driver call, under a deadline,
    holds one thread, the one the call runs in. Its deadline is an entry of
    the process's one watchdog; no call thread, no step thread parked beside
    it (before: three threads per waiting spawn, the waiting one woken every
    second). So a waiting operation is two threads: its engine's and its step's."""
    from flows.steps import attempts

    assert held.conf.conductor.step_timeout > 0  # the default deadline is what is under test
    with _serving(held, STRUCTURE_IN_FLIGHT) as (ids, svc, before):
        _until(lambda: _waiting(held) == STRUCTURE_IN_FLIGHT, 120, f"{STRUCTURE_IN_FLIGHT} operations to wait")
        # Each waiting call runs in its step's own thread, renamed for the call.
        names = [t.name for t in threading.enumerate()]
        assert names.count(f"{WAIT_STEP}-execute") == STRUCTURE_IN_FLIGHT
        assert not [n for n in names if n.startswith("step-call")]
        assert attempts._DEADLINES.pending >= STRUCTURE_IN_FLIGHT
        # Per waiting operation: its engine's thread and its step's, busy;
        # beyond the two pools only the service's own few threads (loop,
        # heartbeat, drift watch, wake-ups, the deadlines): none per call.
        ops, steps = svc._pool, held._executor
        busy = (ops.threads - ops.idle_threads, steps.threads - steps.idle_threads)
        pooled = ops.threads + steps.threads
        others = threading.active_count() - before - pooled
        assert busy == (STRUCTURE_IN_FLIGHT, STRUCTURE_IN_FLIGHT)
        assert others <= 8, sorted(set(names))
        _release_and_expect_success(held, ids, 120)
    assert attempts._DEADLINES.pending == 0  # every deadline cancelled once its call returned
