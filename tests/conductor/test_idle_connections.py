"""After a burst the pools give their idle database connections back: the
server's connection slots are shared by every conductor, and each connection
holds client buffers in the conductor's heap (docs/scale-out.md). Each pool
keeps the one it used last, so the next operation does not connect."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import operations
from persistence.session import create_engine, release_idle
from tests.conftest import clean, write_conf


def _others_connected(url: str) -> int:
    """Connections to the test database but this probe's own."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
    finally:
        engine.dispose()


def test_after_a_burst_each_pool_keeps_only_the_connection_it_used_last(tmp_path, postgresql_url):
    clean(postgresql_url)
    c = Conductor(config.load([str(write_conf(tmp_path / "c.conf", tmp_path / "state", postgresql_url))]))
    try:
        c.add_host("h1", vcpus=64, ram_mb=10**6, disk_gb=10**4)
        handles = [c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(8)]
        runs = [threading.Thread(target=c.run, args=(h.id,)) for h in handles]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        assert {c.status(h.id).state for h in handles} == {operations.SUCCEEDED}
        pools = [c.db.engine.pool] + [e.pool for e in (c.runner.backend.autocommit, c.runner.backend.autocommit_lazy)]
        kept = sum(p.checkedin() for p in pools)
        assert kept > len(pools), "the burst should have left the pools holding connections"
        before = _others_connected(postgresql_url)

        c.release_idle_connections()

        assert _others_connected(postgresql_url) == before - kept + len(pools)
        connects = []
        for p in pools:
            sa.event.listen(p, "connect", lambda *_: connects.append(1))
        for i in range(3):  # one at a time, as on a quiet conductor
            h = c.submit_spawn(SpawnRequest(name=f"after{i}", flavor="m1.tiny", image="cirros"))
            assert c.run(h.id).state == operations.SUCCEEDED
        assert connects == [], "the connections kept should have served the next operations"
        c.release_idle_connections()  # nothing beyond the kept ones: nothing closed, nothing opened
        assert connects == []
        assert _others_connected(postgresql_url) == before - kept + len(pools)
    finally:
        c.close()


def _flow_write_connections(url: str) -> int:
    """Open connections of the flow-write pools (persistence/taskflow_backend.py names them)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'computeflow-flow-writes'"
                )
            )
    finally:
        engine.dispose()


def test_an_idle_service_closes_the_flow_write_connections_of_its_burst(tmp_path, postgresql_url, redis_url):
    """The service's runner writes through the conductor's backend, so the
    release after a burst reaches the connections its flows wrote on (it had
    a backend of its own, whose pools nothing closed)."""
    from conductor import boards
    from conductor.service import ConductorService
    from tests.conductor.test_jobboard import eventually

    clean(postgresql_url)
    extra = f"jobboard = {redis_url}\nclaim_expiry = 3\nidle_thread_seconds = 0.2\nmax_operations = 8\n"
    c = Conductor(config.load([str(write_conf(tmp_path / "c.conf", tmp_path / "state", postgresql_url, extra))]))
    c.add_host("h1", vcpus=64, ram_mb=10**6, disk_gb=10**4)
    svc = ConductorService(c, boards.open_board(c.conf, c.owner, c.db))
    serving = threading.Thread(target=svc.serve)
    serving.start()
    try:
        handles = [c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(8)]
        assert {h.wait(timeout=60).state for h in handles} == {operations.SUCCEEDED}
        # one kept in each of the two write pools (the plain and the lazy-commit one)
        eventually(lambda: _flow_write_connections(postgresql_url) == 2, 30, "the flow-write connections to close")
        assert svc.runner.backend is c.runner.backend
        h = c.submit_spawn(SpawnRequest(name="after", flavor="m1.tiny", image="cirros"))
        assert h.wait(timeout=60).state == operations.SUCCEEDED
    finally:
        svc.stop()
        serving.join(30)
        c.close()


def test_a_release_while_the_server_refuses_us_does_not_raise(postgresql_url):
    """The heartbeat thread releases; an exception there would end it (and
    with it every claim's renewal). Its kept connections dropped and new
    ones refused, as in a database outage: the release gives up quietly, and
    the pool connects again once the server lets it."""
    role = "cf_release_probe"
    admin = create_engine(postgresql_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    engine = create_engine(sa.make_url(postgresql_url).set(username=role).render_as_string(hide_password=False))
    try:
        taken = [engine.connect() for _ in range(3)]
        for conn in taken:
            conn.close()  # three open and idle
        with admin.begin() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} NOLOGIN")
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")

        release_idle(engine)

        with admin.begin() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} LOGIN")
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT 1")) == 1
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()
