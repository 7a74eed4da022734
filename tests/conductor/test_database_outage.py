"""A step whose own database write finds the server gone rides out the outage.

The errors are real: a refused connection, connections terminated by the
server (what a PostgreSQL restart does to a pool), a bad statement; nothing
is mocked but the moment at which the server drops the connections.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from conductor import config
from conductor.api import Conductor
from flows.steps import resources
from persistence import claims, operations
from persistence.models import FlowLogEntry
from persistence.session import connection_lost, create_engine
from tests.conftest import clean, write_conf
from tests.flows.test_spawn import assert_fully_reverted, spawn


def _error_of(url: str, statement: str) -> sa_exc.DBAPIError:
    engine = create_engine(url, connect_timeout=2)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    except sa_exc.DBAPIError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError(f"{statement!r} did not fail on {url}")


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://root@127.0.0.1:1/test", "mysql+pymysql://root@127.0.0.1:1/test"]
)
def test_a_refused_connection_is_an_outage(url):
    assert connection_lost(_error_of(url, "SELECT 1"))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_bad_statement_is_not_an_outage(request, kind):
    url = request.getfixturevalue(f"{kind}_url")
    assert not connection_lost(_error_of(url, "SELECT * FROM no_such_table"))
    assert not connection_lost(ValueError("server closed the connection"))


def test_a_server_out_of_connection_slots_is_an_outage(postgresql_url):
    """PostgreSQL refusing a connection for want of a slot (here a role's
    CONNECTION LIMIT; max_connections says "too many clients") is an outage to
    ride out: seen as a spawn REVERTED when a loaded test machine ran out."""
    admin = create_engine(postgresql_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP ROLE IF EXISTS cf_no_slots")
            conn.exec_driver_sql("CREATE ROLE cf_no_slots LOGIN CONNECTION LIMIT 0")
        refused = _error_of(sa.make_url(postgresql_url).set(username="cf_no_slots").render_as_string(False), "SELECT 1")
        assert "too many connections" in str(refused)
        assert connection_lost(refused)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP ROLE IF EXISTS cf_no_slots")
        admin.dispose()


def test_no_free_connection_in_the_pool_is_an_outage(postgresql_url):
    """Every pooled connection busy past the pool's timeout (a starved
    process with many operations in flight): the statement was never sent,
    so it is ridden out like a dropped connection, not a step's failure."""
    engine = sa.create_engine(postgresql_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    try:
        with engine.connect():
            with pytest.raises(sa_exc.TimeoutError) as caught:
                engine.connect()
        assert connection_lost(caught.value)
    finally:
        engine.dispose()


def _terminate_other_sessions(url: str) -> int:
    """What a PostgreSQL restart does to every pooled connection of the conductor."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND usename = current_user"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def _conductor(tmp_path, url: str, extra: str = "") -> Conductor:
    conf = write_conf(tmp_path / "computeflow.conf", tmp_path / "state", url, extra)
    c = Conductor(config.load([str(conf)]))
    c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
    return c


@pytest.fixture
def pg_url(postgresql_url) -> str:
    clean(postgresql_url)
    return postgresql_url


@pytest.fixture
def drop_connections_at_claim(monkeypatch, pg_url):
    """The first time the claim step writes, the server drops every connection
    of ours just after the step's session took its own: the write fails as it
    does when PostgreSQL restarts in the middle of a step."""
    real = claims.claim
    dropped = []

    def claim_after_drop(session, *args, **kwargs):
        if not dropped:
            session.execute(sa.text("SELECT 1"))  # checked out (and pre-pinged): alive
            dropped.append(_terminate_other_sessions(pg_url))  # now it is not
        return real(session, *args, **kwargs)

    monkeypatch.setattr(resources.claims, "claim", claim_after_drop)
    return dropped


def test_step_rides_out_its_connections_dropped(tmp_path, pg_url, drop_connections_at_claim):
    c = _conductor(tmp_path, pg_url)
    try:
        op_id, state = spawn(c)
        assert drop_connections_at_claim and drop_connections_at_claim[0] >= 1
        assert state == operations.SUCCEEDED
        with c.db.session() as s:
            rows = [
                (r.state, r.error or "")
                for r in s.scalars(
                    sa.select(FlowLogEntry)
                    .where(FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step == "claim_resources")
                    .order_by(FlowLogEntry.id)
                )
            ]
        states = [st for st, _ in rows]
        assert states[-1] == "SUCCESS" and "REVERTING" not in states
        retries = [err for st, err in rows if st == "RETRYING"]
        # The row carries the server's message, not SQLAlchemy's statement and parameters.
        assert retries and all("[parameters:" not in err and "OperationalError" in err for err in retries)
    finally:
        c.close()


def test_no_tolerance_reverts_at_once(tmp_path, pg_url, drop_connections_at_claim):
    c = _conductor(tmp_path, pg_url, "database_outage_tolerance = 0\n")
    try:
        op_id, state = spawn(c)
        assert state == operations.REVERTED
        assert_fully_reverted(c, op_id)
    finally:
        c.close()
