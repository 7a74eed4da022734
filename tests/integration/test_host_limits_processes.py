"""Per-host limits with real processes: the slot of a SIGKILLed holder is
reclaimed once its lease lapses, and the bound holds across two `computeflow
conductor` processes sharing the database (conductor/host_limits.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

from conductor import host_limits
from conductor.api import SpawnRequest
from persistence import operations
from persistence.models import Operation
from tests.conductor.test_host_limits import HANG, _conductor, _op, _reached, _slot_rows
from tests.conductor.test_jobboard import eventually
from tests.conftest import REPO, write_conf

pytestmark = pytest.mark.integration


def test_slot_of_a_killed_process_is_reclaimed(tmp_path, crash_db_url):
    c = _conductor(tmp_path, crash_db_url, "max_concurrent_builds = 1\n")
    try:
        crashing = write_conf(
            tmp_path / "crash.conf",
            tmp_path / "state",
            crash_db_url,
            f"max_concurrent_builds = 1\nlease_seconds = 2\n[fake]\nfaults = {HANG}\n",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conductor.cli",
                "--config-file",
                str(crashing),
                "spawn",
                "vm1",
                "--flavor",
                "m1.tiny",
                "--image",
                "cirros",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            held = eventually(
                lambda: [op_id for op_id, slot in _slot_rows(c) if slot == 0],
                30,
                "the spawning process to hold the slot",
            )
            (orphan,) = held
            eventually(lambda: _reached(c, orphan, "define_guest"), 30, "it to hang")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # Its lease lapses (2 s) and the next spawn takes the slot; the orphan keeps its place.
        second = c.submit_spawn(SpawnRequest(name="vm2", flavor="m1.tiny", image="cirros"))
        assert second.wait().state == operations.SUCCEEDED
        assert _op(c, orphan).state == operations.RUNNING
        resumed = {st.id: st.state for st in c.resume()}
        assert resumed[orphan] == operations.SUCCEEDED
        assert _slot_rows(c) == []
    finally:
        c.close()


def test_limit_holds_across_two_conductor_processes(tmp_path, crash_db_url):
    """Two `computeflow conductor` processes, eight spawns, two builds at a
    time on h1: never more than two ran at once, and some waited in line."""
    limit, count = 2, 8
    c = _conductor(tmp_path, crash_db_url, f"max_concurrent_builds = {limit}\n")
    procs = []
    try:
        handles = [c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(count)]
        with c.db.session() as s:  # this submitter leaves them to the conductors
            s.execute(sa.update(Operation).values(owner=None, lease_expires_at=None))
        for name in ("a", "b"):
            conf = write_conf(
                tmp_path / f"{name}.conf",
                tmp_path / "state",
                crash_db_url,
                f"max_concurrent_builds = {limit}\nmax_operations = 6\n"
                f"poll_interval = 0.05\nlog_file = {tmp_path / name}.log\n"
                "[fake]\nlatency = define_guest:0.2\n",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), "conductor"],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        def ended() -> bool:
            return all(_op(c, h).state in operations.FINAL_STATES for h in handles)

        eventually(ended, 120, "every spawn to end")
        assert {_op(c, h).state for h in handles} == {operations.SUCCEEDED}
        with c.db.session() as s:
            peak = host_limits.HostLimits.from_conf(c.conf).peak(s, list(handles))
        assert 1 <= peak[("builds", "h1")] <= limit, peak
        logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b"))
        assert "waits for a host slot: builds on h1" in logs
        assert _slot_rows(c) == []
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        c.close()
