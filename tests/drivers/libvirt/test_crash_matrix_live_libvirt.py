"""Crash matrix for live migration on the two real daemons.

A real `computeflow live-migration` process is SIGKILLed at a step of the
flow (the `[fake] faults` hook the fake-driver matrix uses:
`STEP:execute:kill:WHEN`, here with the libvirt driver), then a new
`computeflow resume` process finishes the operation. Then libvirt is asked:
one guest, running, on the host the database names, counting on in the same
boot (its console), and nothing of it (domain, disk, port) on the other
daemon; its only claim is there.

One guest serves every case (a spawn per case would double the tier's time):
each case migrates it to the host it is not on, so the cases alternate
between qemu:///system -> second daemon and back. The cases are every step
`before`, and `after` the side effect of the migration itself and of the
switch-over (the kills that leave the most to work out: a completed job with
nothing recorded, a record with no cleanup).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import instances, operations
from tests.conftest import clean, run_cli, write_conf
from tests.drivers.libvirt.conftest import close_drivers, remove_owned_domains
from tests.drivers.libvirt.test_live_migration import (  # noqa: F401 - fixtures
    MIGRATE_S,
    assert_kept_running_on,
    second_daemon,
    system_shared,
)
from tests.drivers.libvirt.test_qemu_guests import BOOT_S, Console
from tests.flows.test_live_migration import STEPS

pytestmark = pytest.mark.integration

CASES = [(s, "before") for s in STEPS] + [("live_migration", "after"), ("switch_over", "after")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_url, system_shared, second_daemon, test_guest):
    """(in-process conductor, calm config, directory for crash configs): hosts src
    (qemu:///system) and dst (the second daemon), vm1 running on src."""
    kernel, initrd = test_guest
    shared = Path(tempfile.mkdtemp(prefix="computeflow-test-", dir="/var/tmp"))
    shared.chmod(0o755)
    confs = tmp_path_factory.mktemp("crash-live")
    clean(sqlite_url)
    libvirt_section = (
        f"[libvirt]\ninstances_path = {shared}/instances\nguest_kernel = {kernel}\n"
        f"guest_initrd = {initrd}\nguest_cmdline = console=ttyS0 quiet\n"
    )
    calm = write_conf(confs / "calm.conf", shared / "state", sqlite_url, libvirt_section)
    calm.write_text(calm.read_text().replace("boot_timeout = 5", f"boot_timeout = {BOOT_S}"))
    c = Conductor(config.load([str(calm)]))
    try:
        c.add_host("src", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=system_shared)
        c.add_host("dst", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=second_daemon)
        status = c.run(c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros", host="src")))
        assert status.state == operations.SUCCEEDED, status.error
        yield c, calm, confs, libvirt_section, shared
    finally:
        try:
            for drv in c.rt._drivers.values():
                remove_owned_domains(drv)
        finally:
            close_drivers(c)
            c.close()
            shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("step,when", CASES)
def test_conductor_killed_at_a_step_then_resumed(world, step, when):
    c, calm, confs, libvirt_section, shared = world
    with c.db.session() as s:
        inst = instances.find_live(s, "vm1")
        uuid, here = inst.uuid, inst.host
    there = "dst" if here == "src" else "src"
    tick = Console(c.rt.driver_for(here), uuid).wait_ticks_beyond(1)

    crash = write_conf(
        confs / "crash.conf",
        shared / "state",
        c.conf.database.connection,
        libvirt_section + f"[fake]\nfaults = {step}:execute:kill:{when}\n",
    )
    died = run_cli(crash, "live-migration", "vm1", "--target-host", there, timeout=MIGRATE_S)
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stdout, died.stderr)
    resumed = run_cli(calm, "resume", timeout=MIGRATE_S)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "live_migration SUCCEEDED" in resumed.stdout, resumed.stdout

    with c.db.session() as s:
        inst = instances.get(s, uuid)
        assert (inst.host, inst.vm_state, inst.held_by) == (there, "active", None)
    assert_kept_running_on(c, uuid, there, tick)
    assert c.rt.driver_for(here).inventory().empty, c.rt.driver_for(here).inventory()
