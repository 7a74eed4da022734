"""Cold resize between two libvirt hosts, driver level, on test:///default.

Two computeflow hosts on one daemon, sharing `instances_path` (as a conductor's
hosts do): the guest's disks move from `{instances_path}/A/{uuid}` to
`.../B/{uuid}`, and the domain, whose uuid is the instance's, is defined on one
side at a time. The real-guest version is tests/drivers/libvirt/test_resize_qemu.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers.base import DiskKind, Flavor, PowerState
from drivers.errors import DiskCannotShrink, GuestNotFound, InvalidGuestState
from drivers.libvirt import disks
from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.resize import kept_dir
from tests.drivers.libvirt.conftest import TEST_URI, remove_owned_domains
from tests.drivers.libvirt.test_snapshot import holds_pattern, write_pattern
from tests.drivers.libvirt.test_test_driver import U1, U2, VIF, build

BIGGER = Flavor("m1.resized", vcpus=2, ram_mb=768, root_gb=2, ephemeral_gb=0, swap_mb=64)


@pytest.fixture
def pair(tmp_path, host_name, qemu_img):
    """(A, B): two hosts on test:///default with one instances_path."""
    made = []
    for suffix in ("a", "b"):
        d = LibvirtDriver(f"{host_name}{suffix}", TEST_URI, instances_path=str(tmp_path / "i"))
        d.init_host()
        made.append(d)
    yield tuple(made)
    for d in made:
        remove_owned_domains(d)
        d.cleanup_host()


def clean_destination(d: LibvirtDriver, instance_uuid: str = U1) -> None:
    """What a flow does on the destination before a revert: destroy's pieces."""
    try:
        d.power_off(instance_uuid)
    except GuestNotFound:  # as destroy's power_off step: not defined there (yet)
        pass
    d.undefine_guest(instance_uuid)
    d.unplug_vif(instance_uuid, VIF.id)
    d.delete_instance_files(instance_uuid)


def resized_to_b(a: LibvirtDriver, b: LibvirtDriver) -> None:
    build(a)
    write_pattern(a._disk_path(U1, DiskKind.ROOT))
    copied = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    assert [(d.kind, os.path.dirname(d.path), d.size_mb) for d in copied] == [
        (DiskKind.ROOT, b._instance_dir(U1), 1024)
    ]
    b.plug_vif(U1, VIF)  # the flow's plug_vif step on the destination
    b.finish_migration(U1, copied, BIGGER, power_on=True)


def test_resize_to_another_host_then_confirm(pair):
    a, b = pair
    resized_to_b(a, b)
    # the source: no domain of its own, its files set aside for a revert, its port still recorded
    assert a.list_instance_uuids() == []
    assert all(p.startswith(kept_dir(a.root, U1) + "/") for p in a.inventory().disks)
    assert os.path.exists(os.path.join(kept_dir(a.root, U1), "disk.root"))
    # the destination: the new flavor's size, its own paths, the data
    info = b.get_info(U1)
    assert (info.state, info.vcpus, info.memory_mb) == (PowerState.RUNNING, 2, 768)
    config = b._host.find_guest(U1).config()
    assert (config.vcpus, config.memory_mb, config.metadata.host, config.metadata.flavor) == (
        2,
        768,
        b.host,
        "m1.resized",
    )
    assert [d.source for d in config.disks] == [b._disk_path(U1, DiskKind.ROOT), b._disk_path(U1, DiskKind.SWAP)]
    assert config.serial.path == b._console_path(U1)
    assert config.interfaces[0].mac == VIF.mac
    root = b._disk_path(U1, DiskKind.ROOT)
    assert disks.info(root).virtual_size == 2048 * disks.MIB and holds_pattern(root)
    assert disks.info(b._disk_path(U1, DiskKind.SWAP)).virtual_size == 64 * disks.MIB
    assert list(b.inventory().ports) == [VIF.id]
    assert not os.path.exists(os.path.join(b._instance_dir(U1), "domain.xml"))

    a.confirm_migration(U1)
    a.confirm_migration(U1)  # idempotent
    assert a.inventory().empty, a.inventory()
    assert b.get_info(U1).state is PowerState.RUNNING and list(b.inventory().ports) == [VIF.id]


def test_revert_brings_the_guest_back_on_the_source(pair):
    a, b = pair
    resized_to_b(a, b)
    with pytest.raises(InvalidGuestState, match="clean up the destination first"):
        a.finish_revert_migration(U1, power_on=True)  # B still has it defined
    assert b.get_info(U1).state is PowerState.RUNNING  # not stolen
    clean_destination(b)
    a.finish_revert_migration(U1, power_on=True)
    a.finish_revert_migration(U1, power_on=True)  # idempotent
    info = a.get_info(U1)
    assert (info.state, info.vcpus, info.memory_mb) == (PowerState.RUNNING, 1, 512)
    assert a._host.find_guest(U1).config().metadata.host == a.host
    root = a._disk_path(U1, DiskKind.ROOT)
    assert disks.info(root).virtual_size == 1024 * disks.MIB and holds_pattern(root)
    assert not os.path.exists(kept_dir(a.root, U1))
    assert sorted(os.listdir(a._instance_dir(U1))) == ["disk.root"]  # no domain.xml, no record
    assert list(a.inventory().ports) == [VIF.id]
    assert b.inventory().empty, b.inventory()


def test_revert_before_finish_migration(pair):
    """The move failed before finish_migration (nothing was defined on B): the
    revert removes what was copied to B, the source goes on."""
    a, b = pair
    build(a)
    a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    assert b.inventory().disks  # the copy
    a.finish_revert_migration(U1, power_on=True)
    assert a.get_info(U1).state is PowerState.RUNNING
    assert b.inventory().empty, b.inventory()


def test_every_step_twice_gives_the_same_result(pair):
    a, b = pair
    build(a)
    copied = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    assert a.migrate_disk_and_power_off(U1, b.host, BIGGER) == copied
    b.finish_migration(U1, copied, BIGGER, power_on=True)
    b.finish_migration(U1, copied, BIGGER, power_on=True)
    assert b.get_info(U1).vcpus == 2 and b.list_instance_uuids() == [U1]
    with pytest.raises(InvalidGuestState, match="already being moved"):
        a.migrate_disk_and_power_off(U1, "elsewhere", BIGGER)


def test_an_interrupted_copy_is_finished_by_the_next_call(pair):
    """Killed after setting the source aside, during the copy: a half-written temporary
    file of a dead process lies next to the destination's root disk."""
    a, b = pair
    build(a)
    a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    os.unlink(b._disk_path(U1, DiskKind.ROOT))
    stale = b._disk_path(U1, DiskKind.ROOT) + ".999999999.1.tmp"
    open(stale, "wb").close()
    (copied,) = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    assert not os.path.exists(stale) and os.path.exists(copied.path)
    b.finish_migration(U1, [copied], BIGGER, power_on=True)
    assert b.get_info(U1).state is PowerState.RUNNING


def test_finish_migration_never_replaces_another_hosts_domain(pair):
    """Finishing on B while A still has the domain defined (its move did not
    complete) must not redefine A's domain under B's name."""
    a, b = pair
    build(a)
    copied = a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    a._host.define_guest(Path(kept_dir(a.root, U1), "domain.xml").read_text())
    with pytest.raises(InvalidGuestState, match="still defined for another host"):
        b.finish_migration(U1, copied, BIGGER, power_on=True)
    assert a._host.find_guest(U1).config().metadata.host == a.host


def test_a_smaller_flavor_is_refused_before_anything_changes(pair):
    a, b = pair
    build(a)
    with pytest.raises(DiskCannotShrink, match="root disk is 1024 MB and the new flavor's is 0 MB"):
        a.migrate_disk_and_power_off(U1, b.host, Flavor("m1.nano", 1, 256, 0))
    assert a.get_info(U1).state is PowerState.RUNNING
    assert not os.path.exists(kept_dir(a.root, U1)) and b.inventory().empty


def test_bad_destination_and_missing_guest(pair):
    a, b = pair
    with pytest.raises(GuestNotFound):
        a.migrate_disk_and_power_off(U1, b.host, BIGGER)
    build(a)
    with pytest.raises(InvalidGuestState, match="not a host name"):
        a.migrate_disk_and_power_off(U1, "../etc", BIGGER)
    assert a.get_info(U1).state is PowerState.RUNNING
    with pytest.raises(InvalidGuestState, match="still defined for another host"):
        b.finish_migration(U1, [], BIGGER, power_on=True)  # A's, never moved
    with pytest.raises(InvalidGuestState, match="without disks migrated"):
        b.finish_migration(U2, [], BIGGER, power_on=True)


def test_resize_in_place_then_revert(pair):
    """Source and destination the same host: the set-aside directory is what a revert
    goes back to, and the resized domain (this host's too) is replaced."""
    a, _ = pair
    build(a)
    copied = a.migrate_disk_and_power_off(U1, a.host, BIGGER)
    a.finish_migration(U1, copied, BIGGER, power_on=True)
    assert a.get_info(U1).vcpus == 2
    assert os.path.isdir(kept_dir(a.root, U1)) and os.path.isdir(a._instance_dir(U1))
    a.finish_revert_migration(U1, power_on=True)
    info = a.get_info(U1)
    assert (info.state, info.vcpus) == (PowerState.RUNNING, 1)
    assert not os.path.exists(kept_dir(a.root, U1))
    assert disks.info(a._disk_path(U1, DiskKind.ROOT)).virtual_size == 1024 * disks.MIB
    assert list(a.inventory().ports) == [VIF.id]


def test_resize_in_place_then_confirm(pair):
    a, _ = pair
    build(a)
    copied = a.migrate_disk_and_power_off(U1, a.host, BIGGER)
    a.finish_migration(U1, copied, BIGGER, power_on=True)
    a.confirm_migration(U1)
    assert a.get_info(U1).vcpus == 2 and list(a.inventory().ports) == [VIF.id]
    assert sorted(os.path.basename(p) for p in a.inventory().disks) == ["disk.root", "disk.swap"]
