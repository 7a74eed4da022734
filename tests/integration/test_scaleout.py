"""Scale-out conductors as real processes on PostgreSQL + Redis: takeover after
SIGKILL, SIGTERM at a step boundary, fencing of a paused (SIGSTOP) conductor,
and many operations while conductors are killed and restarted at random."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import operations
from persistence.models import Claim, FlowLogEntry, Host, Instance, Operation
from tests.conductor.test_jobboard import eventually
from tests.conftest import REPO, clean, run_cli, write_conf

pytestmark = pytest.mark.integration
EXPIRY = 3
SLOW_VIF = "[DEFAULT]\nvif_plugging_timeout = {t}\nvif_plugging_is_fatal = false\n[fake]\ndeliver_vif_events = false\n"


class Cluster:
    """Conductor processes sharing one database, one fake host and one jobboard."""

    def __init__(self, tmp_path: Path, db_url: str, redis_url: str) -> None:
        self.tmp, self.db_url, self.redis_url = tmp_path, db_url, redis_url
        self.procs: list[subprocess.Popen] = []
        self.c = Conductor(config.load([str(self.conf("client"))]))

    def conf(self, name: str, extra: str = "") -> Path:
        return write_conf(
            self.tmp / f"{name}.conf",
            self.tmp / "state",
            self.db_url,
            f"jobboard = {self.redis_url}\nclaim_expiry = {EXPIRY}\n"
            f"poll_interval = 0.05\nlog_file = {self.tmp / name}.log\n{extra}",
        )

    def start(self, name: str, extra: str = "") -> subprocess.Popen:
        with open(self.tmp / f"{name}.err", "a") as err:
            p = subprocess.Popen(
                [sys.executable, "-m", "conductor.cli", "--config-file", str(self.conf(name, extra)), "conductor"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(p)
        return p

    def err(self, name: str) -> str:
        return self._read(f"{name}.err")

    def log(self, name: str) -> str:
        return self._read(f"{name}.log")

    def _read(self, file: str) -> str:
        path = self.tmp / file
        return path.read_text() if path.exists() else ""

    def rows(self, op_id: str) -> list[FlowLogEntry]:
        with self.c.db.session() as s:
            return list(
                s.scalars(
                    sa.select(FlowLogEntry).where(FlowLogEntry.flow_detail_uuid == op_id).order_by(FlowLogEntry.id)
                )
            )

    def op(self, op_id: str) -> Operation:
        with self.c.db.session() as s:
            return s.get(Operation, op_id)

    def reached(self, op_id: str, step: str, state: str = "RUNNING") -> bool:
        return any(r.step == step and r.state == state for r in self.rows(op_id))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()
        self.c.close()


def _cluster(tmp_path, db_url: str, board_url: str):
    clean(db_url)
    cl = Cluster(tmp_path, db_url, board_url)
    cl.c.add_host("h1", vcpus=4096, ram_mb=4096 * 1024, disk_gb=100000)
    try:
        yield cl
    finally:
        cl.close()


@pytest.fixture
def cluster(tmp_path, postgresql_url, redis_url):
    """Conductors on Redis, the scale-out default."""
    yield from _cluster(tmp_path, postgresql_url, redis_url)


@pytest.fixture
def any_board_cluster(tmp_path, postgresql_url, board_url):
    """Conductors on each of Redis, ZooKeeper and etcd in turn."""
    yield from _cluster(tmp_path, postgresql_url, board_url)


def _explain(cl: Cluster, states: dict[str, str]) -> str:
    """What an operation that did not succeed went through: its error, its
    flow log (step, state, attempt, epoch, error) and the conductors' log lines
    that name it, so a failure seen once in CI can be read, not guessed."""
    lines = []
    for op_id, state in states.items():
        if state == operations.SUCCEEDED:
            continue
        lines.append(f"operation {op_id}: {state}, error {cl.op(op_id).error!r}")
        for r in cl.rows(op_id):
            lines.append(f"  {r.at:%H:%M:%S.%f} {r.step} {r.state} attempt {r.attempt} epoch {r.epoch} {r.error or ''}")
        for log in sorted(cl.tmp.glob("*.log")):
            lines += [f"  {log.stem}: {line}" for line in log.read_text().splitlines() if op_id in line]
    return "\n".join(lines)


def assert_consistent(cl: Cluster, op_ids: list[str], hosts: tuple[str, ...] | list[str] = ("h1",)) -> None:
    """Every operation succeeded once: one SUCCESS per step, an active
    instance without a hold, a claim each, a running guest each (on `hosts`)."""
    with cl.c.db.session() as s:
        states = dict(
            (r[0], r[1])
            for r in s.execute(
                sa.select(Operation.id, Operation.state).where(Operation.id.in_([str(i) for i in op_ids]))
            ).all()
        )
        assert set(states.values()) == {operations.SUCCEEDED}, _explain(cl, states)
        dup = s.execute(
            sa.select(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step, sa.func.count())
            .where(FlowLogEntry.state == "SUCCESS")
            .group_by(FlowLogEntry.flow_detail_uuid, FlowLogEntry.step)
            .having(sa.func.count() > 1)
        ).all()
        assert dup == []  # no step (so no operation) completed twice
        insts = list(s.scalars(sa.select(Instance)))
        assert len(insts) == len(op_ids)
        assert {(i.vm_state, i.held_by) for i in insts} == {("active", None)}
        assert s.scalar(sa.select(sa.func.count()).select_from(Claim)) == len(op_ids)
        used = sum(s.get(Host, h).used_vcpus for h in hosts)
        assert used == len(op_ids)  # m1.tiny: 1 vCPU each, claimed once
    assert sum(len(cl.c.rt.driver_for(h).inventory().guests) for h in hosts) == len(op_ids)


def test_sigkilled_conductors_operation_is_taken_over_and_completed(any_board_cluster):
    cluster = any_board_cluster
    a = cluster.start("a", "[fake]\nfaults = power_on:execute:hang\n")
    op_id = cluster.c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    eventually(lambda: cluster.reached(op_id, "power_on"), 60, "conductor a to reach power_on")
    a.kill()
    killed_at = time.monotonic()
    cluster.start("b")
    eventually(lambda: any(r.epoch == 2 for r in cluster.rows(op_id)), 60, "b to take over")
    takeover = time.monotonic() - killed_at
    assert op_id.wait(timeout=60).state == operations.SUCCEEDED
    assert takeover < 4 * EXPIRY + 10  # generous: the measured figure is in bench/README.md
    assert_consistent(cluster, [op_id])


def test_sigterm_finishes_the_step_releases_and_exits_0(cluster):
    a = cluster.start("a", SLOW_VIF.format(t=3))
    op_id = cluster.c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    eventually(lambda: cluster.reached(op_id, "wait_vif_plugged"), 60, "the slow step to start")
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0
    rows = cluster.rows(op_id)
    assert cluster.reached(op_id, "wait_vif_plugged", "SUCCESS")  # the running step finished
    assert not any(r.step == "define_guest" for r in rows)  # and nothing after it started
    steps = [r for r in rows if not r.step.startswith("(")]  # not the flow's own rows
    running = {r.step for r in steps if r.state == "RUNNING"} - {r.step for r in steps if r.state == "SUCCESS"}
    assert running == set()
    op = cluster.op(op_id)
    assert (op.state, op.owner) == (operations.RUNNING, None)
    assert cluster.c.board.waiting() == [(op_id, False)]  # claim released, job kept
    cluster.start("b")
    assert op_id.wait(timeout=60).state == operations.SUCCEEDED
    assert_consistent(cluster, [op_id])


def test_stopped_conductor_is_fenced_after_takeover(any_board_cluster):
    cluster = any_board_cluster
    a = cluster.start("a", SLOW_VIF.format(t=2 * EXPIRY))
    op_id = cluster.c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    eventually(lambda: cluster.reached(op_id, "wait_vif_plugged"), 60, "the slow step to start")
    a.send_signal(signal.SIGSTOP)
    b = cluster.start("b")
    assert op_id.wait(timeout=60).state == operations.SUCCEEDED
    taken_at = min(r.id for r in cluster.rows(op_id) if r.epoch == 2)
    a.send_signal(signal.SIGCONT)  # a's slow step returns now and tries to record it
    eventually(lambda: "lost ownership" in cluster.log("a"), 60, "a to notice it was fenced")
    stale = [(r.step, r.state) for r in cluster.rows(op_id) if r.epoch == 1 and r.id > taken_at]
    assert stale == []
    assert cluster.op(op_id).state == operations.SUCCEEDED
    assert_consistent(cluster, [op_id])
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0


def test_cli_submission_waits_for_a_conductor(cluster):
    cluster.start("a")
    out = run_cli(cluster.conf("client"), "spawn", "vm1", "--flavor", "m1.tiny", "--image", "cirros")
    assert out.returncode == 0, out.stderr
    assert "waiting for a conductor" in out.stdout and "SUCCEEDED" in out.stdout


def test_many_operations_while_conductors_are_killed_and_restarted(cluster):
    n = int(os.environ.get("COMPUTEFLOW_SCALEOUT_OPS", "100"))
    op_ids = [cluster.c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(n)]
    live = {name: cluster.start(name) for name in ("c0", "c1", "c2")}
    rng = random.Random(5)
    kills, deadline = 0, time.monotonic() + 600

    def done() -> int:
        with cluster.c.db.session() as s:
            return s.scalar(
                sa.select(sa.func.count()).select_from(Operation).where(Operation.state.in_(operations.FINAL_STATES))
            )

    # Chaos paced by progress, not by the clock (this machine's load varies a lot):
    # after every `step` completions, SIGKILL a random conductor and start it again.
    step, last = max(3, n // 15), 0
    while (finished := done()) < n and time.monotonic() < deadline:
        if finished - last < step:
            time.sleep(0.2)  # polling the database for progress
            continue
        last = finished
        name = rng.choice(sorted(live))
        live[name].kill()
        live[name].wait()
        kills += 1
        live[name] = cluster.start(name)
    assert done() == n, f"{n - done()} operations lost or stuck after {kills} kills"
    assert kills >= 3
    assert cluster.c.board.waiting() == [] or eventually(lambda: cluster.c.board.waiting() == [], 30)
    assert_consistent(cluster, op_ids)


def test_idle_conductor_past_its_memory_growth_restarts_in_place_and_serves_on(cluster):
    """`recycle_rss_growth`: idle after a burst and still above its first idle
    RSS by more than the limit, the process restarts itself in place (same
    pid, nothing in flight), serves the next operation, and a SIGTERM still
    stops it with status 0."""
    extra = "recycle_rss_growth = 0.001\nidle_thread_seconds = 0.2\n" + SLOW_VIF.format(t=1)
    a = cluster.start("a", extra)
    warm = cluster.c.submit_spawn(SpawnRequest(name="warm", flavor="m1.tiny", image="cirros"))
    assert warm.wait(timeout=60).state == operations.SUCCEEDED
    eventually(lambda: "first idle moment with" in cluster.log("a"), 30, "the first idle RSS")
    assert "restarting in place" not in cluster.log("a")  # the first idle moment is the reference
    burst = [cluster.c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(40)]
    assert {h.wait(timeout=120).state for h in burst} == {operations.SUCCEEDED}
    eventually(lambda: cluster.log("a").count("serving (") == 2, 60, "a to restart in place and serve again")
    assert a.poll() is None  # the same process: exec keeps the pid
    after = cluster.c.submit_spawn(SpawnRequest(name="after", flavor="m1.tiny", image="cirros"))
    assert after.wait(timeout=60).state == operations.SUCCEEDED
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0
    assert_consistent(cluster, [str(h) for h in [warm, *burst, after]])
