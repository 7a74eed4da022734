"""The operator's path through failures, each through the real CLI: a revert
that fails says both causes, exits 3 and names the next command; a process
killed mid-revert shows REVERTING and an orphan; a hung step is terminated
from another shell; step times leave out the waits between attempts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conductor import config
from conductor.api import Conductor
from persistence import instances
from persistence.models import Instance
from persistence.session import Database
from tests.conftest import REPO, clean, run_cli, write_conf

SPAWN = ("spawn", "vm1", "--flavor", "m1.small", "--image", "cirros")


@pytest.fixture
def make_conf(tmp_path, sqlite_url):
    """A config on a clean database with `faults` armed (the CLI reads them at start)."""
    clean(sqlite_url)
    state = tmp_path / "state"

    def make(faults: str = "", extra: str = "") -> Path:
        return write_conf(
            tmp_path / "c.conf", state, sqlite_url, f"step_retry_base_delay = 0.05\n{extra}[fake]\nfaults = {faults}\n"
        )

    conf = make()
    assert run_cli(conf, "hosts", "add", "h1", "--vcpus", "8", "--ram-mb", "16384", "--disk-gb", "200").returncode == 0
    return make


def _json(conf: Path, *args: str):
    out = run_cli(conf, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _op_id(cli_out: str) -> str:
    """The id an operation command prints on its first line."""
    first = cli_out.splitlines()[0]
    assert first.startswith("operation "), cli_out
    return first.split()[1]


def _nothing_left(conf: Path) -> None:
    """What `computeflow inventory` reads, in this process (a CLI start costs ~1 s)."""
    with Conductor(config.load([str(conf)])) as c:
        leaks = c.leaks()
    assert leaks["claims"] == []
    assert all(not h.guests and not h.disks and not h.ports for h in leaks["hosts"].values()), leaks


def _instance(conf: Path) -> Instance:
    db = Database(config.load([str(conf)]).database.connection)
    try:
        with db.session() as s:
            (inst,) = instances.list_live(s)
            s.expunge(inst)
            return inst
    finally:
        db.dispose()


def test_a_failed_revert_shows_both_causes_exits_3_and_the_instance_is_in_error(make_conf):
    conf = make_conf("wait_running:execute:fail,define_guest:revert:fail")
    out = run_cli(conf, *SPAWN)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "spawn FAILED and needs repair: instance vm1" in out.stdout
    assert "is in error on h1, held by this operation" in out.stdout
    assert "cause: wait_running: InjectedFault: injected failure at step wait_running during execute" in out.stdout
    assert "revert failed: InjectedFault: injected failure at step define_guest during revert" in out.stdout
    op_id = _op_id(out.stdout)
    assert f"next: fix the cause, then `computeflow ops retry-revert {op_id}`" in out.stdout
    inst = _instance(conf)
    assert (inst.vm_state, inst.task_state, inst.held_by) == ("error", None, op_id)

    busy = run_cli(conf, "reboot", "vm1")
    assert busy.returncode == 2
    assert f"operation {op_id} holds it (it FAILED and needs repair" in busy.stderr

    fixed = make_conf("")
    repaired = run_cli(fixed, "ops", "retry-revert", op_id)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    _nothing_left(fixed)
    shown = _json(fixed, "ops", "show", op_id, "--transitions")
    steps = {st["step"]: st for st in shown["steps"]}
    assert steps["define_guest"]["revert_attempts"] == 2
    transitions = shown["transitions"]
    reverting = [t["at"] for t in transitions if t["step"] == "define_guest" and t["state"] == "REVERTING"]
    gap = _seconds(reverting[1]) - _seconds(reverting[0])  # a new process started in between
    assert steps["define_guest"]["revert_s"] < gap, (steps["define_guest"], gap)


def _seconds(ts: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(ts.rstrip("Z")).timestamp()


def test_killed_during_its_revert_it_shows_reverting_the_cause_and_an_orphan(make_conf):
    conf = make_conf("wait_running:execute:fail,define_guest:revert:kill")
    out = run_cli(conf, *SPAWN)
    assert out.returncode == -9
    op_id = _op_id(out.stdout)
    text = run_cli(conf, "ops", "show", op_id).stdout
    assert "  error     wait_running: InjectedFault" in text
    assert "REVERTING (ORPHANED: owner dead" in text
    assert "define_guest was reverting when its owner stopped" in text
    assert run_cli(make_conf(""), "resume").returncode == 1  # reverted: the spawn did not happen
    _nothing_left(conf)


def test_transient_retries_show_live_and_count_as_execute_attempts(make_conf):
    conf = make_conf("power_on:execute:fail-transient-2")
    out = run_cli(conf, *SPAWN)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\] power_on +RETRYING InjectedTransientFault", out.stdout)
    assert re.search(r"\] power_on +RUNNING attempt 3", out.stdout)
    shown = run_cli(conf, "ops", "show", _op_id(out.stdout)).stdout
    (line,) = [ln for ln in shown.splitlines() if ln.startswith("power_on ")]
    assert " (3 tries)" in line and "recovered from: InjectedTransientFault" in line, line


def test_a_hung_step_is_terminated_from_another_shell(make_conf):
    # A short lease: the former owner learns of the take-over at its next renewal.
    conf = make_conf("power_on:execute:hang", extra="lease_seconds = 3\n")
    hung = subprocess.Popen(
        [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), *SPAWN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        op_id = _read_until(hung, r"\] power_on +RUNNING")
        shown = run_cli(conf, "ops", "show", op_id).stdout
        assert "RUNNING (owner alive)" in shown and "params    flavor=m1.small image=cirros" in shown
        assert "step      power_on running for" in shown and "of its 3600s deadline" in shown
        nothing = run_cli(conf, "resume")
        assert f"nothing to resume\n  {op_id} spawn RUNNING: its owner" in nothing.stdout

        out = run_cli(make_conf(""), "terminate", op_id)
        assert out.returncode == 1, out.stdout + out.stderr  # reverted, as a cancel
        assert f"operation {op_id} (spawn) taken from" in out.stdout
        assert "spawn REVERTED" in out.stdout and "(terminate)" in out.stdout
        _nothing_left(conf)
        # The former owner learns it at its next lease renewal and stops waiting.
        _, err = hung.communicate(timeout=30)
        assert hung.returncode == 1 and f"operation {op_id} was taken over" in err, err
    finally:
        hung.kill()
        hung.wait()
    again = run_cli(conf, "terminate", op_id)
    assert again.returncode == 2 and "already ended REVERTED: nothing to terminate" in again.stderr


def _read_until(p: subprocess.Popen, text: str, timeout: float = 60) -> str:
    """Read the process's output up to `text`; the operation id it printed."""
    deadline = time.monotonic() + timeout
    op_id = ""
    for line in p.stdout:
        op_id = op_id or _op_id(line)
        if re.search(text, line):
            return op_id
        assert time.monotonic() < deadline, f"no {text!r} in time"
    raise AssertionError(f"the process ended before printing {text!r}: {p.stderr.read()}")
