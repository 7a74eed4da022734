"""The forked CLI (tests/cli_zygote.py) behaves as `python -m conductor.cli` does,
so the tests that use it test what an operator runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests import cli_zygote
from tests.conftest import REPO, write_conf


def test_a_forked_command_answers_as_a_fresh_process_does(tmp_path, monkeypatch):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", f"sqlite:///{tmp_path}/cf.db")
    commands = [
        ["--config-file", str(conf), "hosts", "add", "h1", "--vcpus", "0", "--ram-mb", "1", "--disk-gb", "1"],
        ["--config-file", str(conf), "no-such-command"],
        ["--config-file", str(conf), "hosts", "list", "--json"],  # no database yet
        ["--config-file", str(conf), "hosts", "--help"],
    ]
    monkeypatch.setenv("COMPUTEFLOW_TEST_CLI", "exec")
    fresh = [cli_zygote.run(args, stdin=None, timeout=60) for args in commands]
    monkeypatch.delenv("COMPUTEFLOW_TEST_CLI")
    forked = [cli_zygote.run(args, stdin=None, timeout=60) for args in commands]
    assert [r.returncode for r in fresh] == [2, 2, 2, 0]
    for a, b in zip(fresh, forked, strict=True):
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def test_a_forked_command_past_its_timeout_is_killed_and_said_so(tmp_path):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", f"sqlite:///{tmp_path}/cf.db")
    with pytest.raises(subprocess.TimeoutExpired):  # a forked command takes tens of ms at least
        cli_zygote.run(["--config-file", str(conf), "hosts", "list"], stdin=None, timeout=0.001)


_WORKER = """
import sys, threading
from tests import cli_zygote
starter = threading.Thread(target=lambda: cli_zygote.run(["--help"], stdin=None, timeout=60))
starter.start()
starter.join()  # the thread that started the zygote has ended
first = cli_zygote._ZYGOTE._proc.pid
code = cli_zygote.run(["--help"], stdin=None, timeout=60).returncode
print(first, cli_zygote._ZYGOTE._proc.pid, code, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def test_the_zygote_outlives_its_starting_thread_and_dies_with_its_worker():
    """It lives as long as the process that started it, not its thread (a
    SIGKILLed pytest worker leaves no zygote behind)."""
    with subprocess.Popen(
        [sys.executable, "-c", _WORKER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as worker:
        try:
            assert worker.stdout is not None
            first, serving, code = map(int, worker.stdout.readline().split())
            assert (serving, code) == (first, 0)  # the same zygote served after its starting thread ended
        finally:
            worker.kill()
    assert _ends(first, timeout=30), "the zygote outlived its worker"


def _ends(pid: int, timeout: float) -> bool:
    """Whether `pid` (not our child: polled) is gone within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:  # a zombie, not reaped by its init yet, has ended too
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
