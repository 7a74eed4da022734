"""Live migration between two libvirt daemons, for LibvirtDriver.

The migration is peer-to-peer (`virDomainMigrateToURI3` with
VIR_MIGRATE_PEER2PEER): the source daemon drives it and talks to the
destination daemon itself, so the job belongs to libvirt, not to our process.
A conductor killed mid-migration therefore does not kill the migration; the
re-run step finds the job on the source domain and waits for it (or finds
the guest already on the destination). See docs/live-migration.md.

Instance storage is not shared (each computeflow host has its own
`{instances_path}/{host}`): pre_live_migration creates empty disks of the
same size over the same base image on the destination, and the migration
copies the top layers with VIR_MIGRATE_NON_SHARED_INC. The destination's
domain XML is the source's with the host's instance directory and the
owning host in computeflow's metadata swapped, and interface target names
dropped (both daemons share the machine's network namespace: a tap name
cannot be used twice at once).

The destination URI is handed over in the migrate data (the destination
driver's own URI): it must be reachable by the source *daemon*.

The functions take what they work on (the Host connection, the instance's
Guest, the host's root directory, its port records), not the driver: the
driver's methods look the guest up and pass it on; `migrate` takes the Host,
since it looks again as the guest leaves.
"""

from __future__ import annotations

import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable

import libvirt

from drivers.base import DiskKind, PowerState
from drivers.errors import DriverError, GuestNotFound, InvalidGuestState
from drivers.libvirt import disks, layout
from drivers.libvirt.guest import Guest
from drivers.libvirt.host import Host
from drivers.libvirt.ports import PortRecords

FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_UNSAFE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_NON_SHARED_INC
)
MIGRATION_ADDRESS = "127.0.0.1"  # both daemons on one machine; see docs/live-migration.md
POLL_S = 0.5
#: Downtime (ms) allowed after force-complete: the switch-over happens at once.
FORCE_DOWNTIME_MS = 30_000


def host_uuid(host: Host) -> str:
    caps = ET.fromstring(host.get_connection().getCapabilities())
    return caps.findtext("host/uuid") or ""


def check_destination(host: Host, root: str, block_migration: bool) -> dict:
    """What the source needs to know of this host (`root` is its {instances_path}/{host})."""
    return {
        "dest_host": host.host_name,
        "dest_uri": host.uri,
        "dest_root": root,
        "dest_host_uuid": host_uuid(host),
        "block_migration": block_migration,
    }


def post_copy(migrate_data: dict) -> bool:
    """Whether the migration runs able to switch to post-copy: the source host's
    [libvirt] live_migration_permit_post_copy, fixed in the migrate data at the
    source check so that a resumed step starts the same migration."""
    return bool(migrate_data.get("post_copy"))


def check_source(
    host: Host, root: str, guest: Guest, instance_uuid: str, dest_check: dict, *, permit_post_copy: bool
) -> dict:
    """The destination check plus this host, the guest's state and its disks.

    `permit_post_copy` is this host's [libvirt] live_migration_permit_post_copy."""
    state = guest.power_state()
    if state not in (PowerState.RUNNING, PowerState.PAUSED):
        raise InvalidGuestState(instance_uuid, state.value, "live-migrate")
    if dest_check["dest_host_uuid"] == host_uuid(host):
        raise InvalidGuestState(
            instance_uuid, f"on the same libvirt daemon as host {dest_check['dest_host']}", "live-migrate"
        )
    found = []
    for kind in DiskKind:
        path = layout.disk_path(root, instance_uuid, kind)
        try:
            i = disks.info(path)
        except DriverError:
            continue  # no such disk
        found.append(
            {
                "kind": kind.value,
                "size_mb": i.virtual_size // disks.MIB,
                "backing": i.backing_file,
                "backing_format": i.backing_format,
            }
        )
    return {
        **dest_check,
        "source_host": host.host_name,
        "source_uri": host.uri,
        "source_root": root,
        "source_state": state.value,
        "disks": found,
        "post_copy": permit_post_copy,
    }


def pre_migration(root: str, ports: PortRecords, instance_uuid: str, migrate_data: dict) -> dict:
    """Empty disks of the same size and backing file, and the port records, here
    (under `root`, this host's {instances_path}/{host}, and in `ports`, its records)."""
    for d in migrate_data["disks"]:
        path = layout.disk_path(root, instance_uuid, DiskKind(d["kind"]))
        disks.make_dir(layout.instance_dir(root, instance_uuid))
        with disks.path_lock(path):
            if not os.path.exists(path):
                disks.create_qcow2(path, d["size_mb"], backing=d["backing"], backing_format=d["backing_format"])
    src_ports = _peer_ports(migrate_data["source_root"])
    with ports.change() as records:
        for vif, rec in src_ports.items():
            if rec.get("instance") == instance_uuid:
                records.setdefault(vif, dict(rec))
    return migrate_data


def _peer_ports(root: str) -> dict:
    return PortRecords(os.path.join(root, "ports.json")).read()


def destination_xml(xml: str, migrate_data: dict) -> str:
    """The source's migratable XML, made the destination's."""
    src_root, dest_root = migrate_data["source_root"], migrate_data["dest_root"]
    xml = xml.replace(src_root + "/", dest_root + "/")
    xml = re.sub(
        r"(<(?:\w+:)?host>)" + re.escape(migrate_data["source_host"]) + r"(</(?:\w+:)?host>)",
        lambda m: m.group(1) + migrate_data["dest_host"] + m.group(2),
        xml,
    )
    # interface target names: generated anew on the destination
    return re.sub(r"(<interface\b.*?)<target dev=['\"][^'\"]*['\"]\s*/>(.*?</interface>)", r"\1\2", xml, flags=re.S)


def _dest_guest(instance_uuid: str, conn: libvirt.virConnect):
    try:
        return conn.lookupByUUIDString(instance_uuid)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _job_running(dom: libvirt.virDomain) -> bool:
    try:
        return dom.jobInfo()[0] not in (
            libvirt.VIR_DOMAIN_JOB_NONE,
            libvirt.VIR_DOMAIN_JOB_COMPLETED,
            libvirt.VIR_DOMAIN_JOB_FAILED,
            libvirt.VIR_DOMAIN_JOB_CANCELLED,
        )
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise


def _percent(dom: libvirt.virDomain) -> int | None:
    try:
        st = dom.jobStats()
    except libvirt.libvirtError:
        return None  # the job just ended (or the domain left)
    total = st.get("data_total", 0) + st.get("disk_total", 0)
    done = st.get("data_processed", 0) + st.get("disk_processed", 0)
    return min(99, int(100 * done / total)) if total else None


def migrate(
    host: Host, instance_uuid: str, dest_host: str, migrate_data: dict, progress: Callable[[int], None] | None
) -> None:
    """Migrate, or re-attach to the migration job the source still runs, or
    recognise one that completed; report progress every POLL_S seconds.

    `host` is the source's connection: the guest is looked up there more than
    once, as it leaves."""
    if "dest_uri" not in migrate_data:
        raise DriverError(
            f"cannot live-migrate instance {instance_uuid}: the migration data has no "
            "destination connection (dest_uri); pre_live_migration on the "
            "destination provides it"
        )
    dest_conn = libvirt.open(migrate_data["dest_uri"])
    try:
        guest = host.find_owned_guest(instance_uuid)
        if guest is None:
            moved = _dest_guest(instance_uuid, dest_conn)
            if moved is not None:  # done before (the step runs again after a crash)
                _unpause_if_left_paused(moved, migrate_data)
                return
            raise GuestNotFound(instance_uuid)
        try:
            _run_or_watch(guest.domain, migrate_data, progress)
        except libvirt.libvirtError:
            # The job a killed conductor left may complete between our look at
            # the source and the next call on its domain, which is then gone:
            # the guest's whereabouts decide, not the error.
            if not _arrived(host, instance_uuid, dest_conn):
                raise
        if _arrived(host, instance_uuid, dest_conn):
            _unpause_if_left_paused(_dest_guest(instance_uuid, dest_conn), migrate_data)
            if progress is not None:
                progress(100)
            return
        raise DriverError(f"live migration of {instance_uuid} to {dest_host} ended without moving the guest")
    finally:
        dest_conn.close()


def _unpause_if_left_paused(dom: libvirt.virDomain | None, migrate_data: dict) -> None:
    """A guest that ran on the source runs on the destination.

    The destination keeps the guest paused for the switch-over and the source
    daemon's last phase resumes it; when that phase did not get to it (seen
    with other libvirt users, e.g. CloudStack resumes such guests), the guest
    would stay paused "for migration" although the move is done. A guest
    paused on the source by its user stays paused.
    """
    was = migrate_data.get("source_state", PowerState.RUNNING.value)
    if dom is None or was != PowerState.RUNNING.value:
        return
    state, reason = dom.state()
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
        dom.resume()


def _arrived(host: Host, instance_uuid: str, dest_conn: libvirt.virConnect) -> bool:
    """The guest runs on the destination and no longer on the source.

    The source daemon stops the source's QEMU before it undefines the domain:
    a step re-run after a crash can look in between and find the definition
    inactive. That is the guest having left (post_at_source removes what is
    left); a paused source (post-copy still pulling pages) has not."""
    moved = _dest_guest(instance_uuid, dest_conn)
    if moved is None or not moved.isActive():
        return False
    left = host.find_owned_guest(instance_uuid)
    return left is None or not left.is_active()


def _run_or_watch(dom: libvirt.virDomain, migrate_data: dict, progress: Callable[[int], None] | None) -> None:
    """Start the migration unless the source already runs its job, then watch
    the job until it ends. A failed migration is re-raised unless the guest
    arrived anyway (the caller looks)."""
    failure: list[BaseException] = []
    worker = None
    # Never start a migration of a source that is not running: the guest left it
    # (the job of a killed conductor ended meanwhile); the caller looks where it is.
    if not _job_running(dom) and dom.isActive():
        xml = destination_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), migrate_data)
        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{MIGRATION_ADDRESS}",
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: MIGRATION_ADDRESS,
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml,
        }

        def run() -> None:
            try:
                flags = FLAGS | (libvirt.VIR_MIGRATE_POSTCOPY if post_copy(migrate_data) else 0)
                dom.migrateToURI3(migrate_data["dest_uri"], params, flags)
            except BaseException as e:  # handed to the watching thread
                failure.append(e)

        worker = threading.Thread(target=run, name=f"migrate-{dom.UUIDString()[:8]}", daemon=True)
        worker.start()
    pause = threading.Event()
    # Watch the job (ours, or one a killed conductor started) until it ends.
    while worker.is_alive() if worker is not None else _job_running(dom):
        pct = _percent(dom)
        if progress is not None and pct is not None:
            progress(pct)
        pause.wait(POLL_S)
    if worker is not None:
        worker.join()
    if failure:
        raise failure[0]


def abort(guest: Guest | None) -> None:
    """Cancel the migration job of the source's guest, if it (still) runs one."""
    if guest is not None and _job_running(guest.domain):
        try:
            guest.domain.abortJob()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # no job any more
                raise


def force_complete(guest: Guest | None, *, permit_post_copy: bool) -> None:
    """Post-copy when the migration was started able to (the caller recorded the
    switch-over first: there is no way back), else a downtime large enough to switch
    over at the next iteration. `guest` is the source's; `permit_post_copy` its
    host's [libvirt] live_migration_permit_post_copy."""
    if guest is None or not _job_running(guest.domain):
        return
    dom = guest.domain
    if permit_post_copy:
        try:
            dom.migrateStartPostCopy(0)
            return
        except libvirt.libvirtError as e:
            # Started without VIR_MIGRATE_POSTCOPY (the option was turned on meanwhile),
            # or already in post-copy (a request honoured twice).
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise
            if _in_post_copy(dom):
                return
    dom.migrateSetMaxDowntime(FORCE_DOWNTIME_MS, 0)


def _in_post_copy(dom: libvirt.virDomain) -> bool:
    state, reason = dom.state()
    return state == libvirt.VIR_DOMAIN_PAUSED and reason in (
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
    )


def rollback_at_destination(guest: Guest | None, ports: PortRecords, instance_uuid: str) -> None:
    """Remove the guest and port records pre_migration (or a failed incoming
    migration) left here; the caller removes the disks if asked to."""
    if guest is not None:
        if guest.is_active():
            guest.poweroff()
        guest.undefine()
    _drop_ports(ports, instance_uuid)


def post_at_source(guest: Guest | None, ports: PortRecords, instance_uuid: str) -> None:
    """The guest runs elsewhere: its definition (if any is left) and port records
    go; the caller then removes its files."""
    if guest is not None:
        if guest.is_active():
            raise InvalidGuestState(instance_uuid, "still running on the source", "clean up the migration source of")
        guest.undefine()
    _drop_ports(ports, instance_uuid)


def _drop_ports(ports: PortRecords, instance_uuid: str) -> None:
    with ports.change() as records:
        for vif in [v for v, p in records.items() if p.get("instance") == instance_uuid]:
            del records[vif]


def post_at_destination(host: Host, guest: Guest, instance_uuid: str) -> None:
    """The guest runs here and survives a restart of its daemon (persistent)."""
    dom = guest.domain
    if not dom.isActive():
        raise InvalidGuestState(instance_uuid, guest.power_state().value, "finish the migration of")
    if not dom.isPersistent():
        host.define_guest(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
