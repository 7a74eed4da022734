"""The libvirt driver against libvirt's in-process test driver (test:///default).

(Longer than our ~500 lines: it is the whole test:///default tier in one file.)

No daemon and no QEMU: test:///default keeps domains in this process's memory
(shared by every connection while one is open, and born with a running domain
named 'test' that computeflow must never count). Disks are real files made
with qemu-img. Every implemented driver method, its idempotency, the domain
XML, and computeflow's spawn, destroy and power flows on a libvirt host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from conductor.api import SpawnRequest
from drivers import load_driver
from drivers.base import DiskKind, DiskSpec, Flavor, GuestSpec, Held, HeldResource, Image, PowerState, Vif
from drivers.errors import (
    ConnectionLost,
    DriverError,
    GuestNotFound,
    HypervisorUnavailable,
    ImageNotFound,
    InvalidGuestState,
    NotSupported,
    SoftRebootFailed,
)
from drivers.libvirt import disks, layout
from drivers.libvirt.config import (
    ConfigError,
    DiskConfig,
    DomainConfig,
    InstanceMetadata,
    InterfaceConfig,
    OsConfig,
    SerialConfig,
)
from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.host import HostCapabilities
from flows import power
from persistence import instances, operations
from tests.conftest import REPO
from tests.drivers.libvirt.conftest import TEST_URI, poll, remove_owned_domains

IMAGE = Image("cirros", "raw", 16)
FLAVOR = Flavor("m1.tiny", 1, 512, 1)
U1 = "6f1d8c3e-2b4a-4c1e-9a57-0d2f6b8e1c01"
U2 = "6f1d8c3e-2b4a-4c1e-9a57-0d2f6b8e1c02"
VIF = Vif("9d3c1b2a-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "fa:16:3e:00:00:01")
BUILTIN = "test"


@pytest.fixture
def drv(tmp_path, host_name, qemu_img):
    d = LibvirtDriver(host_name, TEST_URI, instances_path=str(tmp_path / "instances"))
    d.init_host()
    yield d
    remove_owned_domains(d)
    d.cleanup_host()


def build(d: LibvirtDriver, instance_uuid: str = U1) -> None:
    """Everything spawn does, in spawn's order."""
    d.ensure_base_image(IMAGE)
    root = d.create_disk(instance_uuid, DiskSpec(DiskKind.ROOT, 1024, IMAGE))
    d.plug_vif(instance_uuid, VIF)
    assert d.wait_for_vif_plugged(instance_uuid, [VIF.id], 1)
    d.define_guest(GuestSpec(instance_uuid, "vm1", FLAVOR, (root,), (VIF,)))
    d.power_on(instance_uuid)


@pytest.fixture
def conn():
    """A connection of the test's own, for acting behind the driver's back."""
    c = libvirt.open(TEST_URI)
    yield c
    c.close()


# -- domain XML ---------------------------------------------------------------
FULL = DomainConfig(
    type="qemu",
    name="cf-x",
    uuid=U1,
    title="vm1",
    memory_mb=128,
    vcpus=2,
    os=OsConfig(kernel="/g/vmlinuz", initrd="/g/initrd.gz", cmdline="console=ttyS0"),
    disks=(DiskConfig("/i/disk.root", "vda"), DiskConfig("/i/disk.swap", "vdb", "raw")),
    interfaces=(
        InterfaceConfig("network", "fa:16:3e:00:00:01", network="default"),
        InterfaceConfig("ethernet", "fa:16:3e:00:00:02", target_dev="tap0123456789a"),
    ),
    serial=SerialConfig("/i/console.log"),
    metadata=InstanceMetadata("vm1", "h1", "m1.tiny"),
)


@pytest.mark.parametrize("config", [FULL, DomainConfig("test", "plain", U2, 64, 1, acpi=False, apic=False)])
def test_config_renders_and_parses_back(config):
    assert DomainConfig.from_xml(config.to_xml()) == config


def test_rendered_xml_has_what_this_libvirt_needs():
    dom = ET.fromstring(FULL.to_xml())
    assert dom.find("devices/graphics") is None  # libvirt 9 rejects type='none': none at all
    serial = dom.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").attrib == {"path": "/i/console.log", "append": "on"}
    assert [f.tag for f in dom.find("features")] == ["acpi", "apic"]
    assert dom.findtext("uuid") == U1
    assert [e.text for e in dom.find("os")] == ["hvm", "/g/vmlinuz", "/g/initrd.gz", "console=ttyS0"]


def test_config_parses_what_libvirt_writes_back(drv):
    """libvirt adds defaults, aliases and addresses; what we wrote parses back the same."""
    config = FULL.replace(type="test", name="cf-" + U2, uuid=U2)
    dom = drv.daemon.get_connection().defineXML(config.to_xml())
    try:
        parsed = DomainConfig.from_xml(dom.XMLDesc(0))
        # The test driver fills in an arch and a boot device, and names the
        # tap of a network interface itself.
        assert parsed.os == dataclasses.replace(config.os, arch=parsed.os.arch, boot_dev="hd")
        assert parsed.interfaces[0] == dataclasses.replace(
            config.interfaces[0], target_dev=parsed.interfaces[0].target_dev
        )
        assert parsed.replace(os=config.os, interfaces=config.interfaces) == config
        assert parsed.interfaces[1] == config.interfaces[1]
    finally:
        dom.undefine()


def test_metadata_parses_with_and_without_namespace():
    meta = InstanceMetadata("vm1", "h1", "m1.tiny")
    assert InstanceMetadata.from_xml(meta.to_xml()) == meta
    assert (
        InstanceMetadata.from_xml("<instance><name>vm1</name><host>h1</host><flavor>m1.tiny</flavor></instance>")
        == meta
    )


@pytest.mark.parametrize(
    "bad",
    [
        "<domain",
        "<network/>",
        "<domain><name>x</name></domain>",
        f"<domain><name>x</name><uuid>{U1}</uuid><memory unit='parsec'>1</memory></domain>",
    ],
)
def test_config_rejects_what_is_not_a_domain(bad):
    with pytest.raises(ConfigError):
        DomainConfig.from_xml(bad)


def test_interface_needs_a_known_type_and_a_network():
    with pytest.raises(ConfigError):
        InterfaceConfig("bridge", "fa:16:3e:00:00:01")
    with pytest.raises(ConfigError):
        InterfaceConfig("network", "fa:16:3e:00:00:01")


def test_capabilities_list_domain_types_of_the_host_arch(conn):
    caps = HostCapabilities.from_xml(conn.getCapabilities())
    assert caps.arch and "test" in caps.domain_types


# -- the driver, method by method ---------------------------------------------
def test_spawn_sequence_is_idempotent(drv):
    build(drv)
    first = drv.inventory()
    assert first.guests == (U1,) and first.ports == (VIF.id,) and first.base_images == ("cirros",)
    assert first.disks == (layout.disk_path(drv.root, U1, DiskKind.ROOT),)
    build(drv)  # every step again: nothing new, nothing broken
    assert drv.inventory() == first
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_undoing_twice_is_a_no_op(drv):
    build(drv)
    for undo in (
        lambda: drv.power_off(U1),
        lambda: drv.undefine_guest(U1),
        lambda: drv.unplug_vif(U1, VIF.id),
        lambda: drv.delete_disk(U1, DiskKind.ROOT),
        lambda: drv.delete_instance_files(U1),
    ):
        undo()
        undo()
    inv = drv.inventory()
    assert inv.empty, inv
    assert not os.path.exists(layout.instance_dir(drv.root, U1))


def test_inventory_counts_only_this_hosts_guests(drv, tmp_path, conn):
    assert conn.lookupByName(BUILTIN).isActive()  # test:///default's own domain is there...
    other = LibvirtDriver("other-host", TEST_URI, instances_path=str(tmp_path / "other"))
    try:
        build(other, U2)
        build(drv, U1)
        assert drv.inventory().guests == (U1,)  # ...and neither it nor another host's guest counts
        assert drv.list_instance_uuids() == [U1]
        with pytest.raises(GuestNotFound):
            drv.get_info(U2)
        with pytest.raises(GuestNotFound):
            drv.power_off(conn.lookupByName(BUILTIN).UUIDString())
        drv.undefine_guest(U2)  # not ours: left alone
        assert other.list_instance_uuids() == [U2]
    finally:
        remove_owned_domains(other)
        other.cleanup_host()


def test_host_report_attributes_what_it_can_prove_and_lists_the_rest_as_no_ones(drv, conn):
    """Own guest (live power state), disk and port by instance; kept and incoming
    copies by directory; a cf- domain without our metadata, a stray file and a
    directory that is not an instance's with no instance; another host's domain,
    test:///default's own and the port records' own files not at all."""
    build(drv)
    drv.pause(U1)
    root = drv.root
    kept, incoming = str(uuid.uuid4()), str(uuid.uuid4())
    os.makedirs(f"{root}/{kept}.resize")
    Path(f"{root}/{kept}.resize/disk.root").touch()  # inside the kept copy: not a disk of its own
    os.makedirs(f"{root}/{incoming}")
    Path(f"{root}/{incoming}/domain.xml").touch()  # copied here, no guest defined yet
    Path(f"{root}/stray.img").touch()
    os.makedirs(f"{root}/notauuid")
    Path(f"{root}/notauuid/x").touch()
    Path(f"{root}/ports.json.1.2.tmp").touch()  # an interrupted write of the port records
    foreign = DomainConfig("test", f"cf-{drv.host}-by-hand", str(uuid.uuid4()), 64, 1)
    other_uuid = str(uuid.uuid4())
    theirs = foreign.replace(name="cf-" + other_uuid, uuid=other_uuid, metadata=InstanceMetadata("vm2", "other-host"))
    planted = [conn.defineXML(c.to_xml()) for c in (foreign, theirs)]
    try:
        report = drv.host_report()
    finally:
        for dom in planted:
            dom.undefine()
    none = "not computeflow's"
    assert report.host == drv.host
    assert sorted(report.resources, key=repr) == sorted(
        [
            HeldResource(Held.GUEST, U1, U1, PowerState.PAUSED, "cf-" + U1),
            HeldResource(Held.DISK, layout.disk_path(drv.root, U1, DiskKind.ROOT), U1, detail="disk.root"),
            HeldResource(Held.PORT, VIF.id, U1, detail="default"),
            HeldResource(Held.KEPT_COPY, kept, kept, detail=f"{root}/{kept}.resize"),
            HeldResource(Held.INCOMING_COPY, incoming, incoming, detail=f"{root}/{incoming}"),
            HeldResource(Held.DISK, f"{root}/{incoming}/domain.xml", incoming, detail="domain.xml"),
            HeldResource(Held.GUEST, foreign.name, None, PowerState.SHUTDOWN, foreign.name),
            HeldResource(Held.DISK, f"{root}/stray.img", None, detail=none),
            HeldResource(Held.DISK, f"{root}/notauuid", None, detail=none),
        ],
        key=repr,
    )
    assert os.path.exists(f"{root}/ports.json.lock")  # there, and not listed


def test_define_keeps_an_existing_domain(drv):
    build(drv)
    before = drv.daemon.find_guest(U1).config()
    other = GuestSpec(U1, "renamed", Flavor("m1.big", 4, 4096, 1), (), ())
    drv.define_guest(other)
    assert drv.daemon.find_guest(U1).config() == before


def test_domain_is_named_tagged_and_wired_as_specified(drv):
    build(drv)
    config = drv.daemon.find_guest(U1).config()
    assert (config.name, config.uuid, config.title, config.memory_mb, config.vcpus) == ("cf-" + U1, U1, "vm1", 512, 1)
    assert config.metadata == InstanceMetadata("vm1", drv.host, "m1.tiny")
    assert config.disks == (DiskConfig(layout.disk_path(drv.root, U1, DiskKind.ROOT), "vda", "qcow2"),)
    # test:///default has an active network named 'default': the vif joins it.
    assert [(i.type, i.mac, i.network) for i in config.interfaces] == [("network", VIF.mac, "default")]
    assert config.serial == SerialConfig(layout.console_path(drv.root, U1))
    assert config.os.boot_dev == "hd" and config.os.kernel is None


def test_vif_on_an_unknown_network_gets_its_own_tap(drv):
    vif = Vif("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "fa:16:3e:00:00:09", network="nowhere")
    drv.plug_vif(U1, vif)
    drv.define_guest(GuestSpec(U1, "vm1", FLAVOR, (), (vif,)))
    (nic,) = drv.daemon.find_guest(U1).config().interfaces
    assert (nic.type, nic.target_dev) == ("ethernet", "tap0a1b2c3d-4e")
    assert json.loads(Path(drv.ports.path).read_text())[vif.id]["instance"] == U1


@pytest.mark.parametrize(
    "action,expected",
    [
        ("pause", PowerState.PAUSED),
        ("suspend", PowerState.SUSPENDED),
        ("power_off", PowerState.SHUTDOWN),
        ("soft_delete", PowerState.SHUTDOWN),
    ],
)
def test_each_action_and_its_inverse_is_idempotent(drv, action, expected):
    inverse = {"pause": "unpause", "suspend": "resume", "power_off": "power_on", "soft_delete": "restore"}[action]
    build(drv)
    for _ in range(2):
        getattr(drv, action)(U1)
        assert drv.get_info(U1).state is expected
    for _ in range(2):
        getattr(drv, inverse)(U1)
        assert drv.get_info(U1).state is PowerState.RUNNING


@pytest.mark.parametrize("hard", [False, True])
def test_reboot_leaves_it_running(drv, hard):
    build(drv)
    drv.reboot(U1, hard=hard)
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_hard_reboot_works_from_any_state_soft_only_when_running(drv):
    build(drv)
    drv.pause(U1)
    with pytest.raises(InvalidGuestState):
        drv.reboot(U1, hard=False)
    drv.reboot(U1, hard=True)
    drv.suspend(U1)
    drv.reboot(U1, hard=True)
    assert drv.get_info(U1).state is PowerState.RUNNING
    assert not drv.daemon.find_guest(U1).has_managed_save()  # a hard reboot boots afresh


def test_soft_reboot_of_a_guest_ignoring_acpi_fails(drv, monkeypatch):
    build(drv)
    drv.soft_reboot_timeout = 0.2
    from drivers.libvirt.guest import Guest

    monkeypatch.setattr(Guest, "shutdown", lambda self: None)  # the guest ignores the button
    with pytest.raises(SoftRebootFailed):
        drv.reboot(U1, hard=False)
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_power_off_of_a_suspended_guest_drops_its_saved_state(drv):
    build(drv)
    drv.suspend(U1)
    drv.power_off(U1)
    assert drv.get_info(U1).state is PowerState.SHUTDOWN
    drv.power_on(U1)
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_graceful_power_off_waits_for_the_guest(drv):
    build(drv)
    drv.power_off(U1, timeout=5)  # the test driver's guests obey ACPI at once
    assert drv.get_info(U1).state is PowerState.SHUTDOWN


@pytest.mark.parametrize(
    "action,state_setup",
    [
        ("unpause", "power_off"),
        ("resume", "power_off"),
        ("pause", "power_off"),
        ("suspend", "pause"),
        ("power_on", "pause"),
    ],
)
def test_actions_from_the_wrong_state_are_refused(drv, action, state_setup):
    build(drv)
    getattr(drv, state_setup)(U1)
    with pytest.raises(InvalidGuestState):
        getattr(drv, action)(U1)


def test_undefine_refuses_a_running_guest(drv):
    build(drv)
    with pytest.raises(InvalidGuestState):
        drv.undefine_guest(U1)
    drv.pause(U1)
    with pytest.raises(InvalidGuestState):
        drv.undefine_guest(U1)


def test_undefine_of_a_suspended_guest_drops_the_saved_state(drv):
    build(drv)
    drv.suspend(U1)
    drv.undefine_guest(U1)
    assert drv.inventory().guests == ()


@pytest.mark.parametrize(
    "call",
    ["get_info", "power_on", "power_off", "pause", "unpause", "suspend", "resume", "get_console_output", "reboot"],
)
def test_missing_guest_is_guest_not_found(drv, call):
    args = (True,) if call == "reboot" else ()
    with pytest.raises(GuestNotFound):
        getattr(drv, call)(U1, *args)


def test_unimplemented_methods_stay_not_supported(drv):
    with pytest.raises(NotSupported):
        drv.attach_volume(U1, {"volume_id": "v"}, "/dev/vdb")


def test_live_migration_without_the_destinations_data_is_a_clear_error(drv):
    with pytest.raises(DriverError, match="pre_live_migration on the destination provides it"):
        drv.live_migration(U1, "h2", {})


def test_console_output_is_the_console_files_tail(drv):
    build(drv)
    assert drv.get_console_output(U1) == ""  # the test driver writes no console
    with open(layout.console_path(drv.root, U1), "wb") as f:
        f.write(b"x" * 200_000 + b"\ntick 1\n")
    out = drv.get_console_output(U1)
    assert out.endswith("tick 1\n") and len(out) == 100 * 1024


def test_available_resources_come_from_the_hypervisor(drv, conn):
    res = drv.get_available_resource()
    info = conn.getInfo()
    assert (res.vcpus, res.ram_mb, res.hypervisor) == (info[2], info[1], "test")
    assert res.disk_gb > 0


# -- disks --------------------------------------------------------------------
def test_root_disk_is_a_cow_overlay_of_the_cached_base(drv):
    base = drv.ensure_base_image(IMAGE)
    assert os.path.getsize(base) == 16 * disks.MIB
    disk = drv.create_disk(U1, DiskSpec(DiskKind.ROOT, 1024, IMAGE))
    info = disks.info(disk.path)
    assert (info.format, info.virtual_size, info.backing_file, info.backing_format) == (
        "qcow2",
        1024 * disks.MIB,
        base,
        "raw",
    )
    assert disk.backing_file == base and not disk.preallocated
    assert drv.get_instance_disk_info(U1) == [disk]


def test_without_cow_and_with_preallocation(tmp_path, host_name, qemu_img):
    d = LibvirtDriver(
        host_name, TEST_URI, instances_path=str(tmp_path), use_cow_images=False, preallocate_images="space"
    )
    try:
        d.ensure_base_image(IMAGE)
        disk = d.create_disk(U1, DiskSpec(DiskKind.ROOT, 64, IMAGE))
        info = disks.info(disk.path)
        assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", 64 * disks.MIB, None)
        assert info.actual_size >= 64 * disks.MIB and disk.preallocated
        eph = d.create_disk(U1, DiskSpec(DiskKind.EPHEMERAL, 32))
        assert disks.info(eph.path).actual_size >= 32 * disks.MIB
    finally:
        d.cleanup_host()


def test_ephemeral_and_swap_disks_are_formatted(tmp_path, host_name, qemu_img):
    d = LibvirtDriver(host_name, TEST_URI, instances_path=str(tmp_path), default_ephemeral_format="ext4")
    try:
        eph = d.create_disk(U1, DiskSpec(DiskKind.EPHEMERAL, 64))
        swap = d.create_disk(U1, DiskSpec(DiskKind.SWAP, 16))
        for disk, magic_at, magic in ((eph, 1024 + 0x38, b"\x53\xef"), (swap, 4096 - 10, b"SWAPSPACE2")):
            raw = tmp_path / "check.raw"
            disks.run(["qemu-img", "convert", "-O", "raw", disk.path, str(raw)])
            with open(raw, "rb") as f:
                f.seek(magic_at)
                assert f.read(len(magic)) == magic, disk.kind
    finally:
        d.cleanup_host()


def test_base_image_with_a_file_is_copied_and_checked(drv, tmp_path):
    src = tmp_path / "snap.qcow2"
    disks.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "8M"])
    image = Image("snap", "qcow2", 8, str(src))
    cached = drv.ensure_base_image(image)
    assert Path(cached).read_bytes() == src.read_bytes()
    disk = drv.create_disk(U1, DiskSpec(DiskKind.ROOT, 64, image))
    assert disks.info(disk.path).backing_format == "qcow2"
    with pytest.raises(ImageNotFound):
        drv.ensure_base_image(Image("gone", "raw", 1, str(tmp_path / "nope")))


def test_root_disk_smaller_than_its_image_is_refused(drv):
    big = Image("big", "raw", 2048)
    drv.ensure_base_image(big)
    with pytest.raises(InvalidGuestState, match="smaller than image big"):
        drv.create_disk(U1, DiskSpec(DiskKind.ROOT, 1024, big))


def test_an_interrupted_create_leaves_no_file_under_the_final_name(drv, monkeypatch):
    path = layout.disk_path(drv.root, U1, DiskKind.EPHEMERAL)
    os.makedirs(os.path.dirname(path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = f"{path}.{dead}.1.tmp"  # what a process killed mid-create left
    open(stale, "w").close()
    real_run = disks.run

    def killed(cmd):
        real_run(cmd)
        raise KeyboardInterrupt  # dies after qemu-img wrote the temporary file

    monkeypatch.setattr(disks, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        drv.create_disk(U1, DiskSpec(DiskKind.EPHEMERAL, 16))
    assert os.listdir(os.path.dirname(path)) == []  # the stale file went too
    monkeypatch.setattr(disks, "run", real_run)
    assert drv.create_disk(U1, DiskSpec(DiskKind.EPHEMERAL, 16)).path == path


def test_an_existing_disk_of_another_size_is_not_overwritten(drv):
    drv.create_disk(U1, DiskSpec(DiskKind.SWAP, 16))
    with pytest.raises(InvalidGuestState, match="different swap disk"):
        drv.create_disk(U1, DiskSpec(DiskKind.SWAP, 32))
    assert disks.info(layout.disk_path(drv.root, U1, DiskKind.SWAP)).virtual_size == 16 * disks.MIB


def test_instance_paths_stay_under_the_host_directory(drv):
    with pytest.raises(GuestNotFound):
        drv.delete_instance_files("../../etc")


# -- the connection and events ------------------------------------------------
def test_a_dead_connection_is_reopened(drv):
    build(drv)
    drv.daemon.get_connection().close()  # as when the daemon goes away
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_lifecycle_events_reach_listeners_with_the_current_state(drv, conn):
    seen = []
    drv.register_event_listener(seen.append)
    build(drv)
    drv.pause(U1)
    poll(lambda: any(e.power_state is PowerState.PAUSED for e in seen), 10, "a paused event")
    conn.lookupByName(BUILTIN).suspend()  # not ours: no event
    conn.lookupByName(BUILTIN).resume()
    drv.unpause(U1)
    poll(lambda: seen and seen[-1].power_state is PowerState.RUNNING, 10, "a running event")
    assert {(e.instance_uuid, e.host) for e in seen} == {(U1, drv.host)}


class _Error(libvirt.libvirtError):
    """A libvirtError with a chosen code and domain (the real one reads libvirt's last error)."""

    def __init__(self, code: int, domain: int) -> None:
        Exception.__init__(self, f"error {code} from {domain}")
        self.code, self.domain = code, domain

    def get_error_code(self) -> int:
        return self.code

    def get_error_domain(self) -> int:
        return self.domain


@pytest.mark.parametrize(
    "code,domain,expected",
    [
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, ConnectionLost),
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, ConnectionLost),
        (libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_FROM_NONE, ConnectionLost),
        (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, GuestNotFound),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, DriverError),  # e.g. a disk it cannot open
        (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU, DriverError),
    ],
)
def test_libvirt_errors_become_driver_errors(drv, monkeypatch, code, domain, expected):
    from drivers.libvirt.guest import Guest

    build(drv)
    drv.power_off(U1)
    drv.reconnect_timeout = 0  # a connection error is not waited out
    conn = drv.daemon.get_connection()

    def fail(self):
        raise _Error(code, domain)

    monkeypatch.setattr(Guest, "launch", fail)
    with pytest.raises(HypervisorUnavailable if expected is ConnectionLost else expected) as e:
        drv.power_on(U1)
    assert type(e.value) is expected and not isinstance(e.value, libvirt.libvirtError)
    # A connection that is still alive is kept: the error was about another one.
    assert drv.daemon._conn is conn
    monkeypatch.undo()
    drv.power_on(U1)
    assert drv.get_info(U1).state is PowerState.RUNNING


def test_a_lost_connection_is_waited_out_and_the_call_repeated(drv, monkeypatch, conn):
    """The daemon goes away under a call: the driver reconnects and makes the call again
    from the start (power_on then finds the guest to start); a daemon that never comes
    back is ConnectionLost once reconnect_timeout has passed."""
    from drivers.libvirt.guest import Guest

    build(drv)
    drv.power_off(U1)
    real_launch, calls = Guest.launch, []

    def launch_once_lost(self):
        calls.append(self.uuid)
        if len(calls) == 1:
            drv.daemon._conn.close()  # the daemon "restarts": this connection is dead
            raise _Error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC)
        real_launch(self)

    monkeypatch.setattr(Guest, "launch", launch_once_lost)
    reconnects = drv.daemon.reconnects
    drv.power_on(U1)
    assert calls == [U1, U1] and drv.daemon.reconnects == reconnects + 1
    assert drv.get_info(U1).state is PowerState.RUNNING

    def never(self):
        raise _Error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC)

    monkeypatch.setattr(Guest, "pause", never)
    drv.reconnect_timeout = 1.2
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        drv.pause(U1)
    assert 1.2 <= time.monotonic() - started < 10


def test_shared_storage_check_is_a_marker_in_the_host_directory(drv, tmp_path):
    """Evacuate's question, answered from files only (the other host's daemon may be
    down): a host sees the marker only where its directory is the other's."""
    other = LibvirtDriver("other", "qemu:///nowhere", instances_path=str(tmp_path / "instances"))
    data = drv.check_instance_shared_storage_local(U1)
    assert os.path.exists(os.path.join(drv.root, data["filename"]))
    assert drv.check_instance_shared_storage_remote(data)
    assert not other.check_instance_shared_storage_remote(data)  # never connects
    drv.check_instance_shared_storage_cleanup(data)
    drv.check_instance_shared_storage_cleanup(data)  # twice: nothing to remove
    assert not drv.check_instance_shared_storage_remote(data)
    assert drv.host_report().resources == ()
    with pytest.raises(DriverError):
        drv.check_instance_shared_storage_remote({"filename": "../ports.json"})


def test_domain_type_follows_the_connection(tmp_path, host_name):
    d = LibvirtDriver(host_name, TEST_URI, instances_path=str(tmp_path), virt_type="kvm")
    try:
        d.init_host()
        assert d.domain_type == "test"  # the test driver runs nothing else
    finally:
        d.cleanup_host()


def test_unreachable_hypervisor_is_hypervisor_unavailable(tmp_path):
    d = LibvirtDriver("h1", "qemu+unix:///system?socket=/nonexistent/sock", instances_path=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(HypervisorUnavailable) as e:
        d.init_host()
    assert e.value.transient
    assert time.monotonic() - started < 5  # never reached: not waited for (reconnect_timeout)


# -- load_driver and options --------------------------------------------------
def test_load_driver_takes_the_hosts_uri_then_the_option(tmp_path):
    from conductor import config

    conf = config.load(
        [], {(None, "state_path"): str(tmp_path), ("libvirt", "uri"): TEST_URI, ("libvirt", "guest_kernel"): "/k"}
    )
    d = load_driver(conf, "h1", "libvirt")
    assert (d.uri, d.kernel, d.root) == (TEST_URI, "/k", str(tmp_path / "instances" / "h1"))
    assert d.images.directory == str(tmp_path / "instances" / "_base")
    assert load_driver(conf, "h1", "libvirt", "test:///other").uri == "test:///other"
    conf.clear_override("uri", "libvirt")
    with pytest.raises(ValueError, match="no URI"):
        load_driver(conf, "h1", "libvirt")


def test_the_fake_driver_does_not_import_libvirt(tmp_path):
    code = (
        "import sys; from conductor import config; import drivers; "
        f"conf = config.load([], {{(None, 'state_path'): {str(tmp_path)!r}}}); "
        "drivers.load_driver(conf, 'h1', 'fake'); "
        "assert 'libvirt' not in sys.modules, 'libvirt imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


# -- computeflow's flows on a libvirt host ------------------------------------
@pytest.fixture
def conductor(make_conductor, host_name, qemu_img):
    c = make_conductor(f"[libvirt]\nuri = {TEST_URI}\n")
    c.add_host(host_name, vcpus=16, ram_mb=32768, disk_gb=500, driver="libvirt", uri=TEST_URI)
    c.host_name = host_name
    return c


def spawn(c, name: str = "vm1") -> tuple[str, str]:
    op_id = c.submit_spawn(SpawnRequest(name=name, flavor="m1.tiny", image="cirros"))
    return op_id, c.run(op_id).state


def test_spawn_and_destroy_flows(conductor):
    op_id, state = spawn(conductor)
    assert state == operations.SUCCEEDED
    drv = conductor.rt.driver_for(conductor.host_name)
    assert drv.name == "libvirt"
    inv = drv.inventory()
    assert (len(inv.guests), len(inv.disks), len(inv.ports)) == (1, 1, 1)
    with conductor.db.session() as s:
        inst = instances.get(s, operations.get(s, op_id).instance_uuid)
        assert (inst.vm_state, inst.power_state, inst.host) == ("active", "running", conductor.host_name)
    assert inv.guests == (inst.uuid,)
    assert drv.get_info(inst.uuid).state is PowerState.RUNNING

    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    inv = drv.inventory()
    assert inv.empty, inv
    assert set(os.listdir(drv.root)) <= {"ports.json", "ports.json.lock"}  # no instance directory


SPAWN_STEPS = [
    "take_hold",
    "claim_resources",
    "ensure_base_image",
    "create_root_disk",
    "plug_vif_0",
    "wait_vif_plugged",
    "define_guest",
    "power_on",
    "wait_running",
    "mark_active",
]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", SPAWN_STEPS)
def test_spawn_failing_at_any_step_reverts_to_an_empty_host(conductor, step, when):
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    op_id, state = spawn(conductor)
    assert state == operations.REVERTED
    inv = conductor.rt.driver_for(conductor.host_name).inventory()
    assert inv.empty, inv
    conductor.rt.faults.clear()
    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert spawn(conductor)[1] == operations.SUCCEEDED  # and the name can be used again


SETUP = {"power_on": "power_off", "unpause": "pause", "resume": "suspend", "restore": "soft_delete"}


@pytest.mark.parametrize("op", list(power.TRANSITIONS))
def test_power_operations(conductor, op):
    spawn(conductor)
    if op in SETUP:
        assert conductor.run(conductor.submit(SETUP[op], "vm1")).state == operations.SUCCEEDED
    assert conductor.run(conductor.submit(op, "vm1")).state == operations.SUCCEEDED
    drv = conductor.rt.driver_for(conductor.host_name)
    (instance_uuid,) = drv.list_instance_uuids()
    assert drv.get_info(instance_uuid).state.value == power.TRANSITIONS[op].power_state


def test_a_guest_stopping_by_itself_updates_the_record(conductor, conn):
    op_id, _ = spawn(conductor)
    drv = conductor.rt.driver_for(conductor.host_name)
    (instance_uuid,) = drv.list_instance_uuids()
    conn.lookupByUUIDString(instance_uuid).destroy()  # behind computeflow's back

    def recorded():
        with conductor.db.session() as s:
            inst = instances.get(s, instance_uuid)
            return (inst.vm_state, inst.power_state) == ("stopped", "shutdown")

    poll(recorded, 10, "the instance record to show the guest stopped")
    assert conductor.run(conductor.submit("power_on", "vm1")).state == operations.SUCCEEDED
