"""Snapshot on libvirt: the root disk exported to the image store, usable by a later spawn.

test:///default tier: the driver call (file, format, size, pause handling, an
interrupted attempt) and the snapshot flow followed by a spawn from its image,
whose root disk must read back bytes written into the original's root disk.
Real-guest tier (integration): the same on qemu:///system; the source guest's
console proves it ran on through the snapshot, the new guest's that it booted.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conductor.api import SpawnRequest
from drivers.base import DiskKind, PowerState
from drivers.errors import GuestNotFound, InvalidGuestState
from drivers.libvirt import disks, layout
from drivers.libvirt.snapshot import PAUSE_MARKER
from persistence import hosts, operations
from tests.drivers.libvirt.conftest import TEST_URI
from tests.drivers.libvirt.test_qemu_guests import (  # noqa: F401  (qemu_conductor: a fixture)
    Console,
    qemu_conductor,
    run_op,
    virsh,
)
from tests.drivers.libvirt.test_test_driver import U1, build, drv  # noqa: F401  (drv: a fixture)

PATTERN = "0xc5"


def qemu_io(path: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, path], capture_output=True, text=True, timeout=60)


def write_pattern(path: str) -> None:
    done = qemu_io(path, f"write -P {PATTERN} 1M 64k")
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done


def holds_pattern(path: str) -> bool:
    done = qemu_io(path, f"read -P {PATTERN} 1M 64k")
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


# -- the driver call on test:///default ---------------------------------------------------
def test_snapshot_of_a_running_guest_is_a_flat_qcow2_and_it_keeps_running(drv, tmp_path):
    build(drv)
    write_pattern(layout.disk_path(drv.root, U1, DiskKind.ROOT))
    target = str(tmp_path / "store" / "snap.qcow2")
    image = drv.snapshot(U1, target)
    found = disks.info(target)
    assert (found.format, found.backing_file) == ("qcow2", None)  # self-contained
    assert (image.name, image.disk_format, image.size_mb, image.path) == ("snap.qcow2", "qcow2", 1024, target)
    assert holds_pattern(target)
    assert drv.get_info(U1).state is PowerState.RUNNING
    assert not os.path.exists(os.path.join(layout.instance_dir(drv.root, U1), PAUSE_MARKER))
    assert not [n for n in os.listdir(tmp_path / "store") if n.endswith(".tmp")]


def test_a_guest_its_user_paused_stays_paused(drv, tmp_path):
    build(drv)
    drv.pause(U1)
    drv.snapshot(U1, str(tmp_path / "snap.qcow2"))
    assert drv.get_info(U1).state is PowerState.PAUSED


def test_a_stopped_guest_is_copied_and_stays_stopped(drv, tmp_path):
    build(drv)
    drv.power_off(U1)
    drv.snapshot(U1, str(tmp_path / "snap.qcow2"))
    assert drv.get_info(U1).state is PowerState.SHUTDOWN


def test_an_attempt_that_died_holding_the_pause_is_finished_by_the_next(drv, tmp_path):
    """The first attempt paused the guest, wrote its marker and was killed: the
    guest is paused and a stray temporary file lies in the store."""
    build(drv)
    store = tmp_path / "store"
    store.mkdir()
    target = store / "snap.qcow2"
    (store / "snap.qcow2.999999999.1.tmp").write_bytes(b"half")  # of a dead process
    open(os.path.join(layout.instance_dir(drv.root, U1), PAUSE_MARKER), "w").close()
    drv.pause(U1)
    drv.snapshot(U1, str(target))
    assert drv.get_info(U1).state is PowerState.RUNNING
    assert not os.path.exists(os.path.join(layout.instance_dir(drv.root, U1), PAUSE_MARKER))
    assert sorted(os.listdir(store)) == ["snap.qcow2"]
    # and again: same result, nothing paused
    drv.snapshot(U1, str(target))
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_snapshot_refuses_a_missing_guest_or_root_disk(drv, tmp_path):
    with pytest.raises(GuestNotFound):
        drv.snapshot(U1, str(tmp_path / "x.qcow2"))
    build(drv)
    os.unlink(layout.disk_path(drv.root, U1, DiskKind.ROOT))
    with pytest.raises(InvalidGuestState, match="without a root disk"):
        drv.snapshot(U1, str(tmp_path / "x.qcow2"))
    assert drv.get_info(U1).state is PowerState.RUNNING
    assert not os.path.exists(tmp_path / "x.qcow2")


# -- the flow on test:///default -------------------------------------------------------------
def _snapshot_then_spawn(c, host: str) -> tuple[str, str]:
    """Snapshot vm1 as 'vm1-snap', spawn vm2 from it; return both instances' uuids."""
    drv = c.rt.driver_for(host)
    op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    assert c.run(op).state == operations.SUCCEEDED
    u1 = c.status(op).instance_uuid
    snap = c.submit("snapshot", "vm1", image_name="vm1-snap")
    status = c.run(snap)
    assert status.state == operations.SUCCEEDED, status.error
    op2 = c.submit_spawn(SpawnRequest(name="vm2", flavor="m1.tiny", image="vm1-snap"))
    status = c.run(op2)
    assert status.state == operations.SUCCEEDED, status.error
    u2 = c.status(op2).instance_uuid
    root2 = layout.disk_path(drv.root, u2, DiskKind.ROOT)
    with c.db.session() as s:
        image = hosts.get_image(s, "vm1-snap")
    assert disks.info(root2).backing_file == drv.images.path(image)  # over the cached snapshot
    return u1, u2


def test_snapshot_flow_then_spawn_from_it_on_test_driver(make_conductor, host_name, tmp_path, qemu_img):
    c = make_conductor(f"[libvirt]\nuri = {TEST_URI}\ninstances_path = {tmp_path}/instances\n")
    c.add_host(host_name, vcpus=8, ram_mb=8192, disk_gb=50, driver="libvirt", uri=TEST_URI)
    drv = c.rt.driver_for(host_name)
    real_build = drv.define_guest

    def mark_root_then_define(spec):  # data written into vm1's disk before it first runs
        if spec.name == "vm1":
            write_pattern(layout.disk_path(drv.root, spec.instance_uuid, DiskKind.ROOT))
        real_build(spec)

    drv.define_guest = mark_root_then_define
    u1, u2 = _snapshot_then_spawn(c, host_name)
    assert holds_pattern(layout.disk_path(drv.root, u2, DiskKind.ROOT))
    assert sorted(drv.inventory().guests) == sorted([u1, u2])
    assert all(drv.get_info(u).state is PowerState.RUNNING for u in (u1, u2))


# -- real guests on qemu:///system ---------------------------------------------------------
@pytest.mark.integration
def test_snapshot_of_a_running_guest_boots_as_a_new_guest(qemu_conductor):
    """vm1 gets bytes written into its root disk while it is off, runs, is snapshotted
    while running (its console goes on in the same boot), and vm2, spawned from the
    snapshot, boots (its console) and holds those bytes."""
    c = qemu_conductor
    drv = c.rt.driver_for("qemu1")
    op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    assert c.run(op).state == operations.SUCCEEDED
    u1 = c.status(op).instance_uuid
    run_op(c, "power_off")
    write_pattern(layout.disk_path(drv.root, u1, DiskKind.ROOT))
    run_op(c, "power_on")
    con1 = Console(drv, u1)
    tick = con1.wait_ticks_beyond(1)

    snap = c.submit("snapshot", "vm1", image_name="vm1-snap")
    status = c.run(snap)
    assert status.state == operations.SUCCEEDED, status.error
    assert drv.get_info(u1).state is PowerState.RUNNING
    con1.wait_ticks_beyond(tick)
    assert con1.boots() == 1  # paused for the copy, never restarted
    with c.db.session() as s:
        image = hosts.get_image(s, "vm1-snap")
    assert (image.disk_format, image.size_mb) == ("qcow2", 1024)
    assert disks.info(image.path).backing_file is None and holds_pattern(image.path)

    op2 = c.submit_spawn(SpawnRequest(name="vm2", flavor="m1.tiny", image="vm1-snap"))
    status = c.run(op2)
    assert status.state == operations.SUCCEEDED, status.error
    u2 = c.status(op2).instance_uuid
    Console(drv, u2).wait_ticks_beyond(1, boots=1)
    assert f"<uuid>{u2}</uuid>" in virsh("dumpxml", u2)
    root2 = layout.disk_path(drv.root, u2, DiskKind.ROOT)
    assert disks.info(root2).backing_file == drv.images.path(image)
    run_op2 = c.submit("power_off", "vm2")
    assert c.run(run_op2).state == operations.SUCCEEDED
    assert holds_pattern(root2)  # vm2's disk reads vm1's bytes through the snapshot

    for name in ("vm1", "vm2"):
        assert c.run(c.submit_destroy(name)).state == operations.SUCCEEDED
    assert drv.inventory().empty, drv.inventory()
