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

The functions take what they work on (the Host connection, the host's root
`{instances_path}/{host}`, its port records, the [libvirt] values that shape a
new definition), not the driver; finish_migration and finish_revert_migration
return the guest, which the driver starts when asked to.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from drivers.base import Disk, DiskKind, Flavor
from drivers.errors import DiskCannotShrink, GuestNotFound, InvalidGuestState
from drivers.libvirt import disks, layout
from drivers.libvirt.config import DiskConfig, DomainConfig, InstanceMetadata, OsConfig, SerialConfig
from drivers.libvirt.guest import Guest
from drivers.libvirt.host import Host
from drivers.libvirt.ports import PortRecords

RESIZE_SUFFIX = ".resize"
DOMAIN_XML = "domain.xml"
MIGRATION_JSON = "migration.json"
_DISK_ORDER = (DiskKind.ROOT, DiskKind.EPHEMERAL, DiskKind.SWAP)


def kept_dir(root: str, instance_uuid: str) -> str:
    """Where the source (whose files are under `root`) keeps the instance's files
    until confirm or revert."""
    return layout.instance_dir(root, instance_uuid) + RESIZE_SUFFIX


def _host_root(root: str, instance_uuid: str, host: str) -> str:
    """The root of computeflow host `host`, beside `root` under the same instances_path."""
    if not host or "/" in host or host.startswith("."):
        raise InvalidGuestState(instance_uuid, f"asked to move to {host!r}, not a host name", "migrate")
    return os.path.join(os.path.dirname(root), host)


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
def check_fits(instance_uuid: str, flavor: Flavor, directory: str) -> None:
    """Refuse a flavor that would shrink the root or the ephemeral disk (before any change)."""
    wanted = {DiskKind.ROOT: flavor.root_gb * 1024, DiskKind.EPHEMERAL: flavor.ephemeral_gb * 1024}
    for kind, want_mb in wanted.items():
        path = os.path.join(directory, f"disk.{kind.value}")
        if os.path.exists(path):
            have_mb = disks.info(path).virtual_size // disks.MIB
            if want_mb < have_mb:
                raise DiskCannotShrink(instance_uuid, kind.value, have_mb, want_mb)


def migrate_disk_and_power_off(
    host: Host, root: str, ports: PortRecords, instance_uuid: str, dest_host: str, flavor: Flavor
) -> list[Disk]:
    """On the source (`host`, its `root` and port records): see the module's docstring."""
    here, kept = layout.instance_dir(root, instance_uuid), kept_dir(root, instance_uuid)
    dest_root = _host_root(root, instance_uuid, dest_host)
    dest_dir = os.path.join(dest_root, os.path.basename(here))
    guest = host.find_owned_guest(instance_uuid)
    if not os.path.isdir(kept):
        if guest is None:
            raise GuestNotFound(instance_uuid)
        check_fits(instance_uuid, flavor, here)
        guest.poweroff()
        guest.discard_saved_state()  # a suspended guest's RAM does not travel
        mine = {v: p for v, p in ports.read().items() if p.get("instance") == instance_uuid}
        _write(os.path.join(here, MIGRATION_JSON), json.dumps({"dest_host": dest_host, "ports": mine}, sort_keys=True))
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
    host: Host,
    root: str,
    instance_uuid: str,
    copied: list[Disk],
    flavor: Flavor,
    *,
    domain_type: str,
    boot: OsConfig,
    preallocate: bool,
    ephemeral_format: str | None,
) -> Guest:
    """On the destination (`host`, its `root`): the guest defined, not started.

    The keywords are this host's: the <domain type>, how it boots, and the
    [libvirt] preallocate_images and default_ephemeral_format for new disks."""
    here = layout.instance_dir(root, instance_uuid)
    guest = host.find_owned_guest(instance_uuid)
    if guest is None:
        if host.find_guest(instance_uuid) is not None:  # defining would replace it
            raise InvalidGuestState(instance_uuid, "still defined for another host", "finish the migration of")
        saved = os.path.join(here, DOMAIN_XML)
        if not os.path.exists(saved):
            raise InvalidGuestState(
                instance_uuid, f"without disks migrated to {host.host_name}", "finish the migration of"
            )
        for disk in copied:
            if os.path.dirname(disk.path) != here:
                raise InvalidGuestState(instance_uuid, f"given a disk outside {here}", "finish the migration of")
        paths = _fit_disks(root, instance_uuid, flavor, preallocate, ephemeral_format)
        with open(saved) as f:
            source = DomainConfig.from_xml(f.read())
        config = _destination_config(
            source, flavor, paths, host_name=host.host_name, root=root, domain_type=domain_type, boot=boot
        )
        guest = host.define_guest(config.to_xml())
        os.unlink(saved)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(here, DOMAIN_XML))  # an earlier attempt defined, then died
    return guest


def _fit_disks(
    root: str, instance_uuid: str, flavor: Flavor, preallocate: bool, ephemeral_format: str | None
) -> list[str]:
    """Grow the copied disks to the flavor and make the swap disk; the disk paths, in order."""
    wanted = {
        DiskKind.ROOT: flavor.root_gb * 1024,
        DiskKind.EPHEMERAL: flavor.ephemeral_gb * 1024,
        DiskKind.SWAP: flavor.swap_mb,
    }
    paths = []
    for kind in _DISK_ORDER:
        path, want_mb = layout.disk_path(root, instance_uuid, kind), wanted[kind]
        if not want_mb:
            continue
        with disks.path_lock(path):
            if kind is DiskKind.SWAP:
                if os.path.exists(path) and disks.info(path).virtual_size != want_mb * disks.MIB:
                    os.unlink(path)  # of an interrupted earlier attempt with another size
                if not os.path.exists(path):
                    disks.create_qcow2(path, want_mb, preallocate=preallocate, fill="swap")
            elif not os.path.exists(path):  # a new ephemeral disk (the old flavor had none)
                disks.create_qcow2(
                    path,
                    want_mb,
                    preallocate=preallocate,
                    fill=ephemeral_format if kind is DiskKind.EPHEMERAL else None,
                )
            elif disks.info(path).virtual_size < want_mb * disks.MIB:
                disks.run(["qemu-img", "resize", "-q", path, f"{want_mb}M"])
        paths.append(path)
    return paths


def _destination_config(
    source: DomainConfig,
    flavor: Flavor,
    paths: list[str],
    *,
    host_name: str,
    root: str,
    domain_type: str,
    boot: OsConfig,
) -> DomainConfig:
    """The source's definition with this host's paths, kernel and type, and the new size."""
    meta = source.metadata or InstanceMetadata(source.title or source.name, host_name)
    return source.replace(
        type=domain_type,
        memory_mb=flavor.ram_mb,
        vcpus=flavor.vcpus,
        os=boot,
        disks=tuple(DiskConfig(p, f"vd{chr(ord('a') + i)}", "qcow2") for i, p in enumerate(paths)),
        serial=SerialConfig(layout.console_path(root, source.uuid)),
        metadata=InstanceMetadata(meta.instance_name, host_name, flavor.name),
    )


# -- source: confirm or revert -------------------------------------------------------------
def confirm_migration(host_name: str, root: str, ports: PortRecords, instance_uuid: str) -> None:
    """On the source (computeflow host `host_name`, its `root` and port records)."""
    kept = kept_dir(root, instance_uuid)
    record = _read_json(os.path.join(kept, MIGRATION_JSON))
    if record is not None and record["dest_host"] != host_name:
        with ports.change() as records:
            for vif_id in record["ports"]:
                if records.get(vif_id, {}).get("instance") == instance_uuid:
                    del records[vif_id]
    shutil.rmtree(kept, ignore_errors=True)


def finish_revert_migration(host: Host, root: str, ports: PortRecords, instance_uuid: str) -> Guest:
    """On the source (`host`, its `root` and port records): the guest defined
    again as it was, not started."""
    here, kept = layout.instance_dir(root, instance_uuid), kept_dir(root, instance_uuid)
    on_daemon = host.find_guest(instance_uuid)
    if os.path.isdir(kept):
        if on_daemon is not None and not on_daemon.owned_by(host.host_name):
            raise InvalidGuestState(
                instance_uuid,
                "still defined for another host (clean up the destination first)",
                "revert the migration of",
            )
        if on_daemon is not None:  # a resize in place: the resized domain is this host's too
            on_daemon.poweroff()
            on_daemon.undefine()
            on_daemon = None
        record = _read_json(os.path.join(kept, MIGRATION_JSON)) or {"dest_host": host.host_name}
        # The destination's copy: what finish_migration did not get to use when the
        # move failed half way (with a resize in place, the resized files).
        shutil.rmtree(
            os.path.join(_host_root(root, instance_uuid, record["dest_host"]), os.path.basename(here)),
            ignore_errors=True,
        )
        os.rename(kept, here)
    saved = os.path.join(here, DOMAIN_XML)
    moved = _read_json(os.path.join(here, MIGRATION_JSON))
    if moved is not None:
        with ports.change() as records:
            for vif_id, port in moved["ports"].items():
                records.setdefault(vif_id, port)
    guest = host.find_owned_guest(instance_uuid)
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
            guest = host.define_guest(f.read())
    for name in (DOMAIN_XML, MIGRATION_JSON):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(here, name))
    return guest
