"""Real guests: computeflow's flows on qemu:///system with QEMU (TCG) guests.

The guest is the tiny kernel + busybox initramfs of scripts/libvirt/build_guest.sh:
it prints "computeflow-guest: booted" once per boot and "tick N" every second on
its serial console, and powers off when the ACPI power button is pressed. What
the console shows is the proof: ticks grow while it runs, stop while it is
paused, continue where they were after a suspend (its RAM was saved), and
restart at 1 after every boot.

Needs: scripts/libvirt/install.sh, build_guest.sh /var/tmp/computeflow-guest
(or $COMPUTEFLOW_TEST_GUEST_DIR) and start_daemon.sh, run as root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from conductor.api import SpawnRequest
from drivers.base import PowerState
from drivers.libvirt import layout
from persistence import instances, operations
from tests.conftest import _unreachable
from tests.drivers.libvirt.conftest import SCRIPTS, SYSTEM_URI, poll

pytestmark = pytest.mark.integration

BOOT_S = 60  # TCG boot of the tiny guest takes 2-4 s; generous for a loaded CI machine
BOOTED = "computeflow-guest: booted"
POWER_BUTTON = "computeflow-guest: power button"


class Console:
    """What the guest printed, read through the driver (get_console_output)."""

    def __init__(self, drv, instance_uuid: str) -> None:
        self.drv, self.uuid = drv, instance_uuid

    def text(self) -> str:
        return self.drv.get_console_output(self.uuid)

    def boots(self) -> int:
        return self.text().count(BOOTED)

    def ticks(self) -> list[int]:
        """Tick numbers printed since the last boot."""
        return [int(n) for n in re.findall(r"^tick (\d+)\r?$", self.text().split(BOOTED)[-1], re.M)]

    def last_tick(self) -> int:
        ticks = self.ticks()
        return ticks[-1] if ticks else 0

    def wait_ticks_beyond(self, n: int, boots: int | None = None) -> int:
        """Poll until boot number `boots` (default: the current one) printed a tick above n."""

        def ready():
            return (boots is None or self.boots() == boots) and self.last_tick() > n

        poll(ready, BOOT_S, f"tick > {n}" + (f" in boot {boots}" if boots else ""), interval=0.2)
        return self.last_tick()


def observe(seconds: float) -> None:
    """Let time pass to show that something does NOT happen (no synchronisation)."""
    threading.Event().wait(seconds)


@pytest.fixture
def qemu_conductor(make_conductor, qemu_system, test_guest, shared_tmp):
    kernel, initrd = test_guest
    c = make_conductor(
        f"[libvirt]\nuri = {qemu_system}\ninstances_path = {shared_tmp}/instances\n"
        f"guest_kernel = {kernel}\nguest_initrd = {initrd}\nguest_cmdline = console=ttyS0 quiet\n"
        "soft_reboot_timeout = 30\n",
        state_path=shared_tmp / "state",
    )
    c.conf.set_override("boot_timeout", BOOT_S)
    c.add_host("qemu1", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=qemu_system)
    return c


def run_op(c, kind: str, **params) -> None:
    op_id = c.submit(kind, "vm1", **params)
    status = c.run(op_id)
    assert status.state == operations.SUCCEEDED, status.error


def spawn_vm1(c, flavor: str = "m1.tiny", ends: str = operations.SUCCEEDED):
    """Spawn vm1 on qemu1 and check how it ended: (the host's driver, the instance uuid)."""
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor=flavor, image="cirros"))
    assert c.run(op_id).state == ends
    with c.db.session() as s:
        return c.rt.driver_for("qemu1"), operations.get(s, op_id).instance_uuid


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", SYSTEM_URI, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_guest_lifecycle_proved_by_its_console(qemu_conductor):
    c = qemu_conductor
    drv, instance_uuid = spawn_vm1(c)
    con = Console(drv, instance_uuid)
    assert drv.inventory().guests == (instance_uuid,)
    assert drv.get_info(instance_uuid).state is PowerState.RUNNING
    config = drv.daemon.find_guest(instance_uuid).config()
    assert config.type == "qemu" and config.os.kernel.endswith("vmlinuz")
    assert f"<uuid>{instance_uuid}</uuid>" in virsh("dumpxml", instance_uuid)

    # Running: ticks grow, in boot 1.
    tick = con.wait_ticks_beyond(2, boots=1)
    tick = con.wait_ticks_beyond(tick)

    # Paused: no tick while paused; afterwards they continue from where they were.
    run_op(c, "pause")
    assert drv.get_info(instance_uuid).state is PowerState.PAUSED
    frozen = con.last_tick()
    observe(2.5)
    assert con.last_tick() == frozen
    run_op(c, "unpause")
    con.wait_ticks_beyond(frozen)
    assert con.boots() == 1

    # Suspended (managed save): the QEMU process is gone; resume restores the RAM, so
    # the same boot goes on counting.
    run_op(c, "suspend")
    assert drv.get_info(instance_uuid).state is PowerState.SUSPENDED
    assert virsh("domstate", instance_uuid).strip() == "shut off"
    frozen = con.last_tick()
    run_op(c, "resume")
    con.wait_ticks_beyond(frozen)
    assert con.boots() == 1 and frozen + 1 in con.ticks()

    # Powered off: nothing runs; powered on: a fresh boot counts from 1 again.
    run_op(c, "power_off")
    assert drv.get_info(instance_uuid).state is PowerState.SHUTDOWN
    assert virsh("domstate", instance_uuid).strip() == "shut off"
    run_op(c, "power_on")
    con.wait_ticks_beyond(0, boots=2)
    assert con.ticks()[0] == 1

    # Soft reboot: the guest powers off on the ACPI button, then boots again.
    con.wait_ticks_beyond(2, boots=2)  # acpid is up a moment after boot
    presses = con.text().count(POWER_BUTTON)
    run_op(c, "reboot")
    con.wait_ticks_beyond(0, boots=3)
    assert con.text().count(POWER_BUTTON) == presses + 1

    # Hard reboot: no button press, just a fresh boot.
    run_op(c, "reboot", hard=True)
    con.wait_ticks_beyond(0, boots=4)
    assert con.text().count(POWER_BUTTON) == presses + 1

    # The guest shuts itself down behind computeflow's back: the lifecycle event
    # reaches the conductor, which shows the instance stopped.
    con.wait_ticks_beyond(2, boots=4)
    virsh("shutdown", instance_uuid)

    def recorded_stopped():
        with c.db.session() as s:
            inst = instances.get(s, instance_uuid)
            return (inst.vm_state, inst.power_state) == ("stopped", "shutdown")

    poll(recorded_stopped, BOOT_S, "the instance record to show the guest stopped")

    # Destroy: no domain, no disk, no port, no tap left.
    instance_dir = layout.instance_dir(drv.root, instance_uuid)
    assert os.path.exists(instance_dir)
    assert c.run(c.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert drv.inventory().empty, drv.inventory()
    assert not os.path.exists(instance_dir)
    assert instance_uuid not in virsh("list", "--all", "--uuid")


def test_every_disk_and_the_nic_reach_the_guest(qemu_conductor):
    """m1.small: a root overlay, an ext4 ephemeral disk, a swap disk and one NIC (a tap
    libvirt makes, as qemu:///system has no active network named 'default')."""
    c = qemu_conductor
    c.conf.set_override("default_ephemeral_format", "ext4")
    drv, instance_uuid = spawn_vm1(c, "m1.small")
    con = Console(drv, instance_uuid)
    con.wait_ticks_beyond(0)
    ready = re.search(r"^computeflow-guest: ready disks=(.*?) net=(.*?)\r?$", con.text(), re.M)
    assert ready, con.text()
    assert ready.group(1).split() == ["vda", "vdb", "vdc"]
    assert "eth0" in ready.group(2).split()
    (nic,) = drv.daemon.find_guest(instance_uuid).config().interfaces
    assert nic.type == "ethernet" and Path(f"/sys/class/net/{nic.target_dev}").exists()
    assert c.run(c.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert not Path(f"/sys/class/net/{nic.target_dev}").exists()  # libvirt removed the tap
    assert drv.inventory().empty, drv.inventory()


def test_failed_spawn_leaves_nothing_behind(qemu_conductor):
    """The guest booted, then the flow failed: revert stops and undefines it for real."""
    c = qemu_conductor
    c.rt.faults.arm("wait_running:execute:fail:after")
    drv, instance_uuid = spawn_vm1(c, ends=operations.REVERTED)
    assert drv.inventory().empty, drv.inventory()
    assert instance_uuid not in virsh("list", "--all", "--uuid")
    assert not os.path.exists(layout.instance_dir(drv.root, instance_uuid))


def _daemon_pid() -> int | None:
    """The pid of the libvirtd that start_daemon.sh runs, if that is what runs."""
    try:
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "libvirtd" else None


def test_driver_reconnects_after_the_daemon_restarts(qemu_conductor):
    """libvirtd restarts under a running guest: the driver reconnects, the guest
    runs on, and its events still arrive."""
    if os.path.isdir("/run/systemd/system"):  # not the daemon scripts/libvirt/ starts
        _unreachable(
            "libvirtd restart",
            "libvirtd is systemd's here; this test restarts the daemon scripts/libvirt/start_daemon.sh runs",
        )
    pid = _daemon_pid()
    assert pid is not None, "no libvirtd pid in /run/libvirtd.pid"
    c = qemu_conductor
    drv, instance_uuid = spawn_vm1(c)
    con = Console(drv, instance_uuid)
    con.wait_ticks_beyond(1)
    seen = []
    drv.register_event_listener(seen.append)

    os.kill(pid, signal.SIGTERM)
    poll(lambda: not os.path.exists(f"/proc/{pid}"), 30, "libvirtd to exit")
    subprocess.run([str(SCRIPTS / "start_daemon.sh")], check=True, capture_output=True, timeout=60)

    assert drv.get_info(instance_uuid).state is PowerState.RUNNING  # reconnected
    con.wait_ticks_beyond(con.last_tick())  # the guest never stopped
    assert con.boots() == 1
    run_op(c, "pause")
    poll(lambda: any(e.power_state is PowerState.PAUSED for e in seen), 30, "a lifecycle event on the new connection")
    run_op(c, "unpause")
    assert c.run(c.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert drv.inventory().empty


def test_a_killed_qemu_shows_the_instance_stopped_and_it_powers_on_again(qemu_conductor):
    """The QEMU process of a running guest dies (SIGKILL, as the OOM killer would): the
    lifecycle event shows the instance stopped, crashed, and a power-on boots it again."""
    c = qemu_conductor
    drv, instance_uuid = spawn_vm1(c)
    con = Console(drv, instance_uuid)
    con.wait_ticks_beyond(1, boots=1)

    qemu_pid = int(Path(f"/run/libvirt/qemu/cf-{instance_uuid}.pid").read_text())
    os.kill(qemu_pid, signal.SIGKILL)

    def recorded():
        with c.db.session() as s:
            inst = instances.get(s, instance_uuid)
            return (inst.vm_state, inst.power_state) == ("stopped", "crashed")

    poll(recorded, BOOT_S, "the instance record to show the guest stopped, crashed")
    assert drv.get_info(instance_uuid).state is PowerState.CRASHED
    run_op(c, "power_on")
    con.wait_ticks_beyond(0, boots=2)
    assert drv.get_info(instance_uuid).state is PowerState.RUNNING
    with c.db.session() as s:
        inst = instances.get(s, instance_uuid)
        assert (inst.vm_state, inst.power_state) == ("active", "running")
