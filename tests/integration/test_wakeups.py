"""A real `computeflow conductor` process whose poll intervals are an hour:
only notices can explain that it starts a submitted spawn and that the
submitter's `wait()` returns within the deadline (PostgreSQL + Redis; the
ZooKeeper and etcd watches are tested in tests/conductor/test_wakeups.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import operations
from tests.conftest import REPO, clean, write_conf

pytestmark = pytest.mark.integration
SLEEPY = "poll_interval = 3600\nsafety_poll_interval = 3600\nclaim_expiry = 5\n"


def test_a_conductor_process_and_a_waiter_are_woken_by_notices(tmp_path, postgresql_url, redis_url):
    clean(postgresql_url)
    conf = write_conf(
        tmp_path / "c.conf",
        tmp_path / "state",
        postgresql_url,
        f"jobboard = {redis_url}\n{SLEEPY}log_file = {tmp_path}/c.log\n",
    )
    c = Conductor(config.load([str(conf)]))
    c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
    with open(tmp_path / "c.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), "conductor"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        for name in ("vm1", "vm2"):  # the second arrives while the conductor sleeps its hour
            h = c.submit_spawn(SpawnRequest(name=name, flavor="m1.tiny", image="cirros"))
            assert h.wait(timeout=60).state == operations.SUCCEEDED, (tmp_path / "c.err").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        c.close()
