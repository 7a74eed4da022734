"""Cold resize and cold migration: a stopped guest's disks copied to another host's
instance directory, its definition rebuilt there with the new flavor.

Where "another host" is: every computeflow host a conductor drives keeps its
files under `{[libvirt] instances_path}/{host}`, so the destination of a move
from host A to host B is `{instances_path}/B/{uuid}`, reached by a local copy.
A and B may be two computeflow hosts on one libvirt daemon (the tests do that)
or on two daemons whose machines share `instances_path` (and the base-image
cache). There is no remote copy (ssh, rsync). A == B is a resize in place.

Since a domain's uuid is the instance's, one daemon holds at most one domain
per instance; so the source never keeps its domain defined while the
destination's exists. The calls, in the order a flow makes them:

    migrate_disk_and_power_off   source: check the new flavor fits (nothing
                                 shrinks) before touching anything; power off;
                                 save the domain XML and the instance's port
                                 records next to the disks; rename the instance
                                 directory to `{uuid}.resize` (kept for a revert);
                                 copy the disks (not swap) and the XML to the
                                 destination; undefine the source domain. The
                                 destination's ports are the flow's (plug_vif).
    finish_migration             destination: grow root/ephemeral to the flavor,
                                 make a fresh swap disk, define the domain from
                                 the copied XML with the flavor's vCPUs and
                                 memory, this host's paths and kernel; start it.
    confirm_migration            source: drop the port records and the
                                 `{uuid}.resize` directory.
    finish_revert_migration      source, after the destination was cleaned up
                                 (power_off, undefine_guest, unplug_vif,
                                 delete_instance_files there), or when the move
                                 failed before finish_migration: delete what was
                                 copied to the destination, rename `{uuid}.resize`
                                 back, restore its port records (on one host the
                                 destination's unplug_vif removed them), define
                                 the saved XML, start it.

Each call is idempotent and works out where an interrupted run stopped from
what is on disk and on the daemon: files appear under their final names only
complete (disks.publishing), and the rename is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import TYPE_CHECKING

from drivers.base import Disk, DiskKind, Flavor
from drivers.errors import DiskCannotShrink, GuestNotFound, InvalidGuestState
from drivers.libvirt import disks
from drivers.libvirt.config import DiskConfig, DomainConfig, InstanceMetadata, SerialConfig

if TYPE_CHECKING:
    from drivers.libvirt.driver import LibvirtDriver

RESIZE_SUFFIX = ".resize"
DOMAIN_XML = "domain.xml"
MIGRATION_JSON = "migration.json"
_DISK_ORDER = (DiskKind.ROOT, DiskKind.EPHEMERAL, DiskKind.SWAP)


def kept_dir(drv: LibvirtDriver, instance_uuid: str) -> str:
    """Where the source keeps the instance's files until confirm or revert."""
    return drv._instance_dir(instance_uuid) + RESIZE_SUFFIX


def _host_root(drv: LibvirtDriver, instance_uuid: str, host: str) -> str:
    if not host or "/" in host or host.startswith("."):
        raise InvalidGuestState(instance_uuid, f"asked to move to {host!r}, not a host name", "migrate")
    return os.path.join(os.path.dirname(drv.root), host)


def _write(final: str, text: str) -> None:
    with disks.publishing(final) as tmp, open(tmp, "w") as f:
        f.write(text)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# -- source: migrate_disk_and_power_off ----------------------------------------------------
def check_fits(drv: LibvirtDriver, instance_uuid: str, flavor: Flavor, directory: str) -> None:
    """Refuse a flavor that would shrink the root or the ephemeral disk (before any change)."""
    wanted = {DiskKind.ROOT: flavor.root_gb * 1024, DiskKind.EPHEMERAL: flavor.ephemeral_gb * 1024}
    for kind, want_mb in wanted.items():
        path = os.path.join(directory, f"disk.{kind.value}")
        if os.path.exists(path):
            have_mb = disks.info(path).virtual_size // disks.MIB
            if want_mb < have_mb:
                raise DiskCannotShrink(instance_uuid, kind.value, have_mb, want_mb)


def migrate_disk_and_power_off(drv: LibvirtDriver, instance_uuid: str, dest_host: str, flavor: Flavor) -> list[Disk]:
    here, kept = drv._instance_dir(instance_uuid), kept_dir(drv, instance_uuid)
    dest_root = _host_root(drv, instance_uuid, dest_host)
    dest_dir = os.path.join(dest_root, os.path.basename(here))
    guest = drv._find(instance_uuid)
    if not os.path.isdir(kept):
        if guest is None:
            raise GuestNotFound(instance_uuid)
        check_fits(drv, instance_uuid, flavor, here)
        guest.poweroff()
        guest.discard_saved_state()  # a suspended guest's RAM does not travel
        ports = {v: p for v, p in drv.ports.read().items() if p.get("instance") == instance_uuid}
        _write(os.path.join(here, MIGRATION_JSON), json.dumps({"dest_host": dest_host, "ports": ports}, sort_keys=True))
        _write(os.path.join(here, DOMAIN_XML), guest.definition_xml())
        os.rename(here, kept)  # the point from which a revert has something to restore
    record = _read_json(os.path.join(kept, MIGRATION_JSON))
    if record is None or record["dest_host"] != dest_host:
        raise InvalidGuestState(
            instance_uuid, f"already being moved to {record and record['dest_host']}", f"migrate to {dest_host}"
        )

    copied = []
    disks.make_dir(dest_dir)
    for kind in (DiskKind.ROOT, DiskKind.EPHEMERAL):  # swap is scratch: made afresh there
        source = os.path.join(kept, f"disk.{kind.value}")
        if os.path.exists(source):
            final = os.path.join(dest_dir, f"disk.{kind.value}")
            disks.copy_file(source, final)
            found = disks.info(final)
            copied.append(Disk(kind, final, found.virtual_size // disks.MIB, found.backing_file))
    with open(os.path.join(kept, DOMAIN_XML)) as f:
        _write(os.path.join(dest_dir, DOMAIN_XML), f.read())
    if guest is not None:
        guest.poweroff()  # in case something started it since
        guest.undefine()
    return copied


# -- destination: finish_migration ---------------------------------------------------------
def finish_migration(
    drv: LibvirtDriver, instance_uuid: str, copied: list[Disk], flavor: Flavor, power_on: bool
) -> None:
    here = drv._instance_dir(instance_uuid)
    guest = drv._find(instance_uuid)
    if guest is None:
        if drv._host.find_guest(instance_uuid) is not None:  # defining would replace it
            raise InvalidGuestState(instance_uuid, "still defined for another host", "finish the migration of")
        saved = os.path.join(here, DOMAIN_XML)
        if not os.path.exists(saved):
            raise InvalidGuestState(instance_uuid, f"without disks migrated to {drv.host}", "finish the migration of")
        for disk in copied:
            if os.path.dirname(disk.path) != here:
                raise InvalidGuestState(instance_uuid, f"given a disk outside {here}", "finish the migration of")
        paths = _fit_disks(drv, instance_uuid, flavor)
        with open(saved) as f:
            source = DomainConfig.from_xml(f.read())
        guest = drv._host.define_guest(_destination_config(drv, source, flavor, paths).to_xml())
        os.unlink(saved)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(here, DOMAIN_XML))  # an earlier attempt defined, then died
    if power_on and not guest.is_active():
        drv._launch(guest)


def _fit_disks(drv: LibvirtDriver, instance_uuid: str, flavor: Flavor) -> list[str]:
    """Grow the copied disks to the flavor and make the swap disk; the disk paths, in order."""
    wanted = {
        DiskKind.ROOT: flavor.root_gb * 1024,
        DiskKind.EPHEMERAL: flavor.ephemeral_gb * 1024,
        DiskKind.SWAP: flavor.swap_mb,
    }
    paths = []
    for kind in _DISK_ORDER:
        path, want_mb = drv._disk_path(instance_uuid, kind), wanted[kind]
        if not want_mb:
            continue
        with disks.path_lock(path):
            if kind is DiskKind.SWAP:
                if os.path.exists(path) and disks.info(path).virtual_size != want_mb * disks.MIB:
                    os.unlink(path)  # of an interrupted earlier attempt with another size
                if not os.path.exists(path):
                    disks.create_qcow2(path, want_mb, preallocate=drv.preallocate, fill="swap")
            elif not os.path.exists(path):  # a new ephemeral disk (the old flavor had none)
                disks.create_qcow2(
                    path,
                    want_mb,
                    preallocate=drv.preallocate,
                    fill=drv.default_ephemeral_format if kind is DiskKind.EPHEMERAL else None,
                )
            elif disks.info(path).virtual_size < want_mb * disks.MIB:
                disks.run(["qemu-img", "resize", "-q", path, f"{want_mb}M"])
        paths.append(path)
    return paths


def _destination_config(drv: LibvirtDriver, source: DomainConfig, flavor: Flavor, paths: list[str]) -> DomainConfig:
    """The source's definition with this host's paths, kernel and type, and the new size."""
    fresh = drv._boot_config()
    meta = source.metadata or InstanceMetadata(source.title or source.name, drv.host)
    return source.replace(
        type=drv.domain_type,
        memory_mb=flavor.ram_mb,
        vcpus=flavor.vcpus,
        os=fresh,
        disks=tuple(DiskConfig(p, f"vd{chr(ord('a') + i)}", "qcow2") for i, p in enumerate(paths)),
        serial=SerialConfig(drv._console_path(source.uuid)),
        metadata=InstanceMetadata(meta.instance_name, drv.host, flavor.name),
    )


# -- source: confirm or revert -------------------------------------------------------------
def confirm_migration(drv: LibvirtDriver, instance_uuid: str) -> None:
    kept = kept_dir(drv, instance_uuid)
    record = _read_json(os.path.join(kept, MIGRATION_JSON))
    if record is not None and record["dest_host"] != drv.host:
        with drv.ports.change() as ports:
            for vif_id in record["ports"]:
                if ports.get(vif_id, {}).get("instance") == instance_uuid:
                    del ports[vif_id]
    shutil.rmtree(kept, ignore_errors=True)


def finish_revert_migration(drv: LibvirtDriver, instance_uuid: str, power_on: bool) -> None:
    here, kept = drv._instance_dir(instance_uuid), kept_dir(drv, instance_uuid)
    on_daemon = drv._host.find_guest(instance_uuid)
    if os.path.isdir(kept):
        if on_daemon is not None and not drv._owns(on_daemon):
            raise InvalidGuestState(
                instance_uuid,
                "still defined for another host (clean up the destination first)",
                "revert the migration of",
            )
        if on_daemon is not None:  # a resize in place: the resized domain is this host's too
            on_daemon.poweroff()
            on_daemon.undefine()
            on_daemon = None
        record = _read_json(os.path.join(kept, MIGRATION_JSON)) or {"dest_host": drv.host}
        # The destination's copy: what finish_migration did not get to use when the
        # move failed half way (with a resize in place, the resized files).
        shutil.rmtree(
            os.path.join(_host_root(drv, instance_uuid, record["dest_host"]), os.path.basename(here)),
            ignore_errors=True,
        )
        os.rename(kept, here)
    saved = os.path.join(here, DOMAIN_XML)
    moved = _read_json(os.path.join(here, MIGRATION_JSON))
    if moved is not None:
        with drv.ports.change() as ports:
            for vif_id, port in moved["ports"].items():
                ports.setdefault(vif_id, port)
    guest = drv._find(instance_uuid)
    if guest is None:
        if not os.path.exists(saved):
            raise GuestNotFound(instance_uuid)
        if on_daemon is not None:
            raise InvalidGuestState(
                instance_uuid,
                "still defined for another host (clean up the destination first)",
                "revert the migration of",
            )
        with open(saved) as f:
            guest = drv._host.define_guest(f.read())
    for name in (DOMAIN_XML, MIGRATION_JSON):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(here, name))
    if power_on and not guest.is_active():
        drv._launch(guest)
