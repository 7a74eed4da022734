"""The forked CLI (tests/cli_zygote.py) behaves as `python -m conductor.cli` does,
so the tests that use it test what an operator runs."""

from __future__ import annotations

import subprocess

import pytest

from tests import cli_zygote
from tests.conftest import write_conf


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
