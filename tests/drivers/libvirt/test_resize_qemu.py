"""Cold resize between two hosts with a real guest: qemu:///system, the tiny TCG guest.

Driver level (the four calls in the order a flow makes them), then end to end:
flows/resize.py through the conductor (resize, revert_resize, confirm_resize).

Two computeflow hosts on one daemon, one instances_path. The guest's kernel
runs without `quiet`, so its console states how many CPUs it brought up and how
much memory it has; with the `ready` line (its disks) and the tick counter that
proves, on each side, whether the guest runs and with which size.
"""

from __future__ import annotations

import os
import re

import pytest

from conductor.api import SpawnRequest
from drivers.base import DiskKind, PowerState
from drivers.libvirt import disks
from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.resize import kept_dir
from persistence import instances, operations
from tests.drivers.libvirt.test_qemu_guests import Console, observe, virsh
from tests.drivers.libvirt.test_resize import BIGGER, clean_destination
from tests.drivers.libvirt.test_test_driver import U1, build

pytestmark = pytest.mark.integration


@pytest.fixture
def qemu_pair(qemu_system, test_guest, shared_tmp, host_name):
    kernel, initrd = test_guest
    made = []
    for suffix in ("a", "b"):
        d = LibvirtDriver(
            f"{host_name}{suffix}",
            qemu_system,
            instances_path=str(shared_tmp / "instances"),
            kernel=kernel,
            initrd=initrd,
            cmdline="console=ttyS0",
        )
        d.init_host()
        made.append(d)
    yield tuple(made)
    for d in made:
        for instance_uuid in d.list_instance_uuids():
            d.power_off(instance_uuid)
            d.undefine_guest(instance_uuid)
        d.cleanup_host()


class SizedConsole(Console):
    """The console of the current boot: how many CPUs, how much memory, which disks."""

    def last_boot_log(self) -> str:
        """Everything since the kernel of the last boot started (its banner)."""
        return self.text().split("Linux version")[-1]

    def cpus(self) -> int:
        found = re.findall(r"smp: Brought up \d+ nodes?, (\d+) CPUs?", self.last_boot_log())
        return int(found[-1]) if found else 0

    def memory_kib(self) -> int:
        found = re.findall(r"Memory: \d+K/(\d+)K available", self.last_boot_log())
        return int(found[-1]) if found else 0

    def disks(self) -> list[str]:
        found = re.findall(r"^computeflow-guest: ready disks=(.*?) net=", self.last_boot_log(), re.M)
        return found[-1].split() if found else []


def test_cold_resize_to_another_host_revert_then_confirm(qemu_pair):
    a, b = qemu_pair
    build(a)  # m1.tiny: 1 vCPU, 512 MiB, a 1 GiB root disk, one NIC
    on_a = SizedConsole(a, U1)
    on_a.wait_ticks_beyond(1, boots=1)
    assert (on_a.cpus(), on_a.disks()) == (1, ["vda"])
    assert 400 * 1024 < on_a.memory_kib() <= 512 * 1024

    # migrate: the source stops (no more ticks), its files are set aside
    copied = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    assert a.list_instance_uuids() == []
    assert os.path.exists(os.path.join(kept_dir(a.root, U1), "disk.root"))
    kept_console = os.path.join(kept_dir(a.root, U1), "console.log")
    stopped = os.path.getsize(kept_console)
    observe(1.5)
    assert os.path.getsize(kept_console) == stopped  # nothing prints on A any more

    # finish on B: 2 vCPUs, 768 MiB, a 2 GiB root and a swap disk, in the XML and the console
    b.finish_migration(U1, copied, BIGGER, power_on=True)
    dumped = virsh("dumpxml", U1)
    assert re.search(r"<vcpu[^>]*>2</vcpu>", dumped)
    assert re.search(r"<memory unit='KiB'>786432</memory>", dumped)
    assert b._disk_path(U1, DiskKind.ROOT) in dumped and a.root not in dumped
    on_b = SizedConsole(b, U1)
    on_b.wait_ticks_beyond(1, boots=1)
    assert (on_b.cpus(), on_b.disks()) == (2, ["vda", "vdb"])
    assert 600 * 1024 < on_b.memory_kib() <= 768 * 1024
    assert disks.info(b._disk_path(U1, DiskKind.ROOT)).virtual_size == 2048 * disks.MIB

    # revert: B cleaned up as a flow would, A boots its own copy again at the old size
    clean_destination(b)
    assert b.inventory().empty, b.inventory()
    a.finish_revert_migration(U1, power_on=True)
    on_a.wait_ticks_beyond(0, boots=2)
    assert (on_a.cpus(), on_a.disks()) == (1, ["vda"])
    assert a.get_info(U1).state is PowerState.RUNNING and a.get_info(U1).vcpus == 1
    assert on_a.ticks()[0] == 1

    # again, and confirm: A keeps nothing, B runs on
    copied = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    b.finish_migration(U1, copied, BIGGER, power_on=True)
    SizedConsole(b, U1).wait_ticks_beyond(1, boots=1)
    a.confirm_migration(U1)
    assert a.inventory().empty, a.inventory()
    tick = SizedConsole(b, U1).last_tick()
    observe(1.5)
    assert SizedConsole(b, U1).last_tick() > tick  # still running after the source cleaned up
    assert [u.lower() for u in virsh("list", "--uuid").split()].count(U1) == 1


# -- end to end: the resize flow through the conductor ---------------------------------------
@pytest.fixture
def two_host_conductor(make_conductor, qemu_system, test_guest, shared_tmp, host_name):
    """A conductor with two libvirt hosts on the one daemon, named afresh per test
    (`{host_name}-1`, `-2`): a guest some earlier, interrupted run left defined on
    qemu:///system is no host's here, so it cannot show in their inventories."""
    kernel, initrd = test_guest
    c = make_conductor(
        f"[libvirt]\nuri = {qemu_system}\ninstances_path = {shared_tmp}/instances\n"
        f"guest_kernel = {kernel}\nguest_initrd = {initrd}\nguest_cmdline = console=ttyS0\n",
        state_path=shared_tmp / "state",
    )
    c.conf.set_override("boot_timeout", 120)
    names = (f"{host_name}-1", f"{host_name}-2")
    for name in names:
        c.add_host(name, vcpus=4, ram_mb=8192, disk_gb=100, driver="libvirt", uri=qemu_system)
    return c, names


def _ok(c, kind: str, **params) -> None:
    status = c.run(c.submit(kind, "vm1", **params))
    assert status.state == operations.SUCCEEDED, status.error


def test_resize_flow_revert_then_confirm_on_real_guests(two_host_conductor):
    """m1.tiny on the first host -> m1.medium on the second (2 vCPUs, 4 GiB, three disks), reverted,
    then again and confirmed; each side's console says which size the guest runs at."""
    c, (first, second) = two_host_conductor
    op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros", host=first))
    assert c.run(op).state == operations.SUCCEEDED
    u = c.status(op).instance_uuid
    one, two = c.rt.driver_for(first), c.rt.driver_for(second)
    SizedConsole(one, u).wait_ticks_beyond(0, boots=1)

    _ok(c, "resize", flavor="m1.medium", target_host=second)
    with c.db.session() as s:
        inst = instances.get(s, u)
        assert (inst.vm_state, inst.host, inst.flavor) == ("resized", second, "m1.medium")
    on_two = SizedConsole(two, u)
    on_two.wait_ticks_beyond(0, boots=1)
    assert (on_two.cpus(), on_two.disks()) == (2, ["vda", "vdb", "vdc"])
    assert two.get_info(u).memory_mb == 4096 and one.list_instance_uuids() == []

    _ok(c, "revert_resize")
    with c.db.session() as s:
        inst = instances.get(s, u)
        assert (inst.vm_state, inst.host, inst.flavor) == ("active", first, "m1.tiny")
    on_one = SizedConsole(one, u)
    on_one.wait_ticks_beyond(0, boots=2)
    assert (on_one.cpus(), on_one.disks()) == (1, ["vda"])
    assert two.inventory().empty, two.inventory()

    _ok(c, "resize", flavor="m1.medium", target_host=second)
    _ok(c, "confirm_resize")
    SizedConsole(two, u).wait_ticks_beyond(0, boots=1)
    assert one.inventory().empty, one.inventory()
    assert c.run(c.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert two.inventory().empty, two.inventory()
    assert u not in virsh("list", "--all", "--uuid")
