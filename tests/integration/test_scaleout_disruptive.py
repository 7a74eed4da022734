"""Redis and PostgreSQL restarted under running conductors: operations pause
and continue, none lost or corrupted.

These restart servers every other test uses, so they are marked `disruptive`
and scripts/test.sh runs them alone, after everything else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import sqlalchemy as sa

from conductor.api import SpawnRequest
from persistence import operations
from persistence.models import Claim, FlowLogEntry, Host, Instance, Operation
from tests.conductor.test_jobboard import eventually
from tests.integration.test_scaleout import assert_consistent, cluster  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]
N = 30


def restart_redis() -> None:
    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=30)
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        timeout=30,
    )
    eventually(
        lambda: subprocess.run(["redis-cli", "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
        30,
        "Redis to answer again",
    )


def restart_postgresql() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=120)


def _done(cl) -> int:
    for _ in range(50):  # the test's own reads ride out the restart too
        try:
            with cl.c.db.session() as s:
                return s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Operation)
                    .where(Operation.state.in_(operations.FINAL_STATES))
                )
        except sa.exc.OperationalError:
            time.sleep(0.2)
    raise AssertionError("the database did not come back")


def assert_nothing_lost(cl, op_ids) -> None:
    """A step whose own database write met the restart fails, and its flow is
    reverted: such operations end REVERTED with nothing left behind; every
    other one succeeded exactly once. None is lost, stuck or FAILED."""
    with cl.c.db.session() as s:
        ops = list(s.scalars(sa.select(Operation).where(Operation.id.in_([str(i) for i in op_ids]))))
        assert {o.state for o in ops} == {operations.SUCCEEDED}, [
            (o.id, o.state, o.error) for o in ops if o.state != operations.SUCCEEDED
        ]
        ok = [o for o in ops if o.state == operations.SUCCEEDED]
        dup = s.execute(
            sa.select(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step)
            .where(FlowLogEntry.state == "SUCCESS")
            .group_by(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step)
            .having(sa.func.count() > 1)
        ).all()
        assert dup == []
        insts = {i.uuid: i for i in s.scalars(sa.select(Instance))}
        assert all(i.held_by is None for i in insts.values())
        assert sorted(c.operation_id for c in s.scalars(sa.select(Claim))) == sorted(o.id for o in ok)
        assert {insts[o.instance_uuid].vm_state for o in ok} <= {"active"}
        assert s.get(Host, "h1").used_vcpus == len(ok)
    assert len(cl.c.rt.driver_for("h1").inventory().guests) == len(ok)


@pytest.mark.parametrize("restart", [restart_redis, restart_postgresql], ids=["redis", "postgresql"])
def test_server_restart_mid_run_pauses_and_continues(cluster, restart):  # noqa: F811
    op_ids = [cluster.c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(N)]
    procs = [cluster.start(f"c{i}") for i in range(2)]
    eventually(lambda: _done(cluster) >= 3, 120, "the first operations to finish")
    restart()
    eventually(lambda: _done(cluster) == N, 300, "every operation to finish after the restart")
    cluster.c.db.engine.dispose()  # the pool's connections died with the server
    if restart is restart_redis:
        assert_consistent(cluster, op_ids)  # Redis holds no state the flows depend on
    else:
        assert_nothing_lost(cluster, op_ids)
    for i, p in enumerate(procs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, cluster.err(f"c{i}") + cluster.log(f"c{i}")[-4000:]
