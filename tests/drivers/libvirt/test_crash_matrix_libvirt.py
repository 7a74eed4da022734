"""Crash matrix for spawn on real libvirt: qemu:///system, the tiny TCG guest.

A real `computeflow spawn` process (compute_driver = libvirt) is SIGKILLed at a
step boundary, a new `computeflow resume` process finishes the operation, and
then libvirt itself is asked what is left: exactly one running domain for a
spawn that completed; for one that was reverted no domain (running or merely
defined) with the instance's uuid, no file under the host's instances path,
no port record, no volume, no temporary file in the base-image cache.

Cases (chosen to keep the tier to a few minutes on 2 cores): every step with
`before` during execute; `after` for the steps that leave the most behind them
(a formatted disk, the definition, the running guest, the last step); during
revert (mark_active fails, so everything is undone) a kill around the undo of
the definition, of the start, of a disk and of the port. A kill stops steps
running in parallel too, so the disks and the port are caught half made.
On SQLite: the database is not what is under test here (the fake-driver
matrix in tests/integration covers PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor
from drivers.libvirt import layout
from persistence import instances, operations
from persistence.models import Operation
from tests.conftest import REPO, clean, run_cli, write_conf
from tests.drivers.libvirt.conftest import SYSTEM_URI, poll
from tests.drivers.libvirt.test_qemu_guests import Console
from tests.flows.test_spawn import SPAWN_STEPS

pytestmark = pytest.mark.integration

EXECUTE_CASES = [(s, "before") for s in SPAWN_STEPS] + [
    (s, "after") for s in ("create_swap_disk", "define_guest", "power_on", "mark_active")
]
REVERT_CASES = [
    ("define_guest", "before"),
    ("power_on", "after"),
    ("create_root_disk", "after"),
    ("plug_vif_0", "after"),
]


@pytest.fixture
def confs(tmp_path, sqlite_url, qemu_system, test_guest, shared_tmp, host_name):
    """make(faults) -> (crash config with `faults`, calm config) sharing a state path and
    database, with the libvirt host `host_name` (of its own: other tests share the daemon)."""
    clean(sqlite_url)
    kernel, initrd = test_guest
    libvirt_section = (
        f"[libvirt]\nuri = {qemu_system}\ninstances_path = {shared_tmp}/instances\n"
        f"guest_kernel = {kernel}\nguest_initrd = {initrd}\n"
        "guest_cmdline = console=ttyS0 quiet\n"
    )
    base = "compute_driver = libvirt\n"
    state = shared_tmp / "state"

    def make(faults: list[str]) -> tuple[Path, Path]:
        extra = libvirt_section + f"[fake]\nfaults = {','.join(faults)}\n"
        crash = write_conf(tmp_path / "crash.conf", state, sqlite_url, extra)
        calm = write_conf(tmp_path / "calm.conf", state, sqlite_url, libvirt_section)
        for conf in (crash, calm):  # compute_driver belongs to [DEFAULT], at the top
            conf.write_text(conf.read_text().replace("[DEFAULT]\n", "[DEFAULT]\n" + base, 1))
        with Conductor(config.load([str(calm)])) as c:  # in-process: one CLI start less per case
            c.add_host(host_name, vcpus=4, ram_mb=8192, disk_gb=100, uri=qemu_system)
        return crash, calm

    yield make, shared_tmp, host_name
    # Whatever a failed case left on the daemon for this host.
    conn = libvirt.open(SYSTEM_URI)
    try:
        for dom in conn.listAllDomains(0):
            if str(shared_tmp) in dom.XMLDesc(0):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    finally:
        conn.close()


def _crash_then_resume(crash: Path, calm: Path) -> str:
    died = run_cli(crash, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros", timeout=120)
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stdout, died.stderr)
    resumed = run_cli(calm, "resume", "--json", timeout=120)
    assert resumed.returncode in (0, 1), resumed.stderr
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            (op_id,) = s.scalars(sa.select(Operation.id)).all()
        return op_id


def _domains_with(instance_uuid: str) -> list[tuple[str, bool]]:
    """(name, running) of every domain on qemu:///system with that uuid, asked directly."""
    conn = libvirt.open(SYSTEM_URI)
    try:
        return [(d.name(), bool(d.isActive())) for d in conn.listAllDomains(0) if d.UUIDString() == instance_uuid]
    finally:
        conn.close()


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def _instance_files(host_dir: Path) -> list[str]:
    """Files under the host's instances path but its own (the port records and their lock)."""
    return [f for f in _files_under(host_dir) if "/" in f]


def _assert_converged(calm: Path, shared: Path, host: str, op_id: str, expect: str) -> None:
    with Conductor(config.load([str(calm)])) as c:
        try:
            with c.db.session() as s:
                op = operations.get(s, op_id)
                inst = instances.get(s, op.instance_uuid)
                assert op.state == expect, op.error
                assert op.owner is None and inst.held_by is None
                if expect == operations.SUCCEEDED:
                    assert (inst.vm_state, inst.power_state) == ("active", "running")
                else:
                    assert inst.vm_state == "error"
            drv = c.rt.driver_for(host)
            inv = drv.inventory()
            domains = _domains_with(op.instance_uuid)
            host_dir = shared / "instances" / host
            base_dir = shared / "instances" / "_base"
            assert not [f for f in _files_under(base_dir) if f.endswith(".tmp")]
            if expect == operations.SUCCEEDED:
                assert domains == [(f"cf-{op.instance_uuid}", True)], domains
                assert inv.guests == (op.instance_uuid,) and len(inv.ports) == 1, inv
                assert _instance_files(host_dir) == [
                    f"{op.instance_uuid}/{n}" for n in ("console.log", "disk.ephemeral", "disk.root", "disk.swap")
                ]
                # and the guest is really running: its console shows it booted
                Console(drv, op.instance_uuid).wait_ticks_beyond(0, boots=1)
                assert c.run(c.submit_destroy("vm1")).state == operations.SUCCEEDED
                assert _domains_with(op.instance_uuid) == []
            else:
                assert domains == [], domains
                assert inv.empty and not inv.volumes, inv
                assert _instance_files(host_dir) == []
                assert not os.path.exists(layout.instance_dir(drv.root, op.instance_uuid))
        finally:
            for drv in list(c.rt._drivers.values()):
                drv.cleanup_host()


@pytest.mark.parametrize("step,when", EXECUTE_CASES)
def test_kill_during_execute_then_resume_finishes(confs, step, when):
    make, shared, host = confs
    crash, calm = make([f"{step}:execute:kill:{when}"])
    op_id = _crash_then_resume(crash, calm)
    _assert_converged(calm, shared, host, op_id, operations.SUCCEEDED)


@pytest.mark.parametrize("step,when", REVERT_CASES)
def test_kill_during_revert_then_resume_reverts(confs, step, when):
    make, shared, host = confs
    crash, calm = make(["mark_active:execute:fail", f"{step}:revert:kill:{when}"])
    op_id = _crash_then_resume(crash, calm)
    _assert_converged(calm, shared, host, op_id, operations.REVERTED)


def test_a_killed_conductor_takes_its_disk_commands_with_it(tmp_path):
    """disks.run's child (qemu-img, mkswap...) must not outlive a SIGKILLed caller, or
    it could write a temporary file after the resuming process cleaned up."""
    marker = tmp_path / "child.pid"
    script = (
        "import threading, sys\n"
        "from drivers.libvirt import disks\n"
        f"threading.Thread(target=disks.run, args=(['sh', '-c', 'echo $$ > {marker}; "
        "exec sleep 60'],)).start()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        child = int(poll(lambda: marker.exists() and marker.read_text().strip(), 30, "the command to start"))
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=30)
        poll(lambda: not _alive(child), 30, "the command to die with its caller")
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
