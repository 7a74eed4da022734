"""LibvirtDriver: computeflow's driver contract on a libvirt daemon.

Layout on disk, per computeflow host (several may share one machine):

    {instances_path}/{host}/ports.json             port records (ports.py)
    {instances_path}/{host}/{uuid}/disk.root       qcow2, over the base image when use_cow_images
    {instances_path}/{host}/{uuid}/disk.ephemeral  qcow2
    {instances_path}/{host}/{uuid}/disk.swap       qcow2
    {instances_path}/{host}/{uuid}/console.log     the guest's serial console
    {base_images_path}/{image}                     the base-image cache, shared

A domain is named `cf-{instance uuid}`, has the instance uuid as its uuid and
carries computeflow's <metadata> element naming the instance and the host that
owns it; domains without it (test:///default's built-in 'test', an operator's
own guests) are never listed, counted or touched.

The driver runs on the hypervisor's machine: disks are created locally with
qemu-img at the paths the domain XML names.

One module (~710 lines) on purpose: it is the contract's method list, each a
short composition of host.py, guest.py, config.py, disks.py, ports.py and
migration.py, where the libvirt work itself lives; every method goes through
`calls.translated` (errors translated, a daemon restart waited out and the
call repeated). Split by operation, the parts would share the driver's
private lookups (`_guest`, `_own_guests`, `_disk_path`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid as uuidlib

import libvirt

from drivers import base
from drivers.base import (
    Disk,
    DiskKind,
    DiskSpec,
    GuestInfo,
    GuestSpec,
    HostResources,
    Image,
    Inventory,
    LifecycleEvent,
    PowerState,
    Vif,
)
from drivers.errors import (
    DriverError,
    GuestNotFound,
    InvalidGuestState,
    RootDiskTooSmall,
    SoftRebootFailed,
)
from drivers.libvirt import disks, layout, resize, snapshot
from drivers.libvirt import migration
from drivers.libvirt.calls import translated
from drivers.libvirt.config import DiskConfig, DomainConfig, InstanceMetadata, InterfaceConfig, OsConfig, SerialConfig
from drivers.libvirt.guest import Guest
from drivers.libvirt.host import Host
from drivers.libvirt.ports import PortRecords

DOMAIN_PREFIX = "cf-"
MAX_CONSOLE_BYTES = 100 * 1024
DEFAULT_CMDLINE = "console=ttyS0"
_POLL_S = 0.1
_IGNORED_EVENTS = frozenset({libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED})


class LibvirtDriver(base.ComputeDriver):
    name = "libvirt"

    def __init__(
        self,
        host: str,
        uri: str,
        *,
        instances_path: str,
        base_images_path: str | None = None,
        use_cow_images: bool = True,
        preallocate_images: str = "none",
        virt_type: str = "qemu",
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        default_ephemeral_format: str | None = None,
        soft_reboot_timeout: float = 60,
        permit_post_copy: bool = False,
        reconnect_timeout: float = 60,
    ) -> None:
        super().__init__(host)
        self.uri = uri
        self.use_cow_images = use_cow_images
        self.preallocate = preallocate_images == "space"
        self.virt_type = virt_type
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.default_ephemeral_format = default_ephemeral_format
        self.soft_reboot_timeout = soft_reboot_timeout
        self.permit_post_copy = permit_post_copy
        self.reconnect_timeout = reconnect_timeout
        # Absolute: the paths go into domain XML and qcow2 headers.
        instances_path = os.path.abspath(instances_path)
        self.root = os.path.join(instances_path, host)
        self.images = disks.ImageCache(
            os.path.abspath(base_images_path) if base_images_path else os.path.join(instances_path, "_base")
        )
        self.ports = PortRecords(os.path.join(self.root, "ports.json"))
        self._host = Host(uri, host, on_lifecycle=self._on_lifecycle)
        self._domain_type: str | None = None

    # -- host ---------------------------------------------------------------
    @translated
    def init_host(self) -> None:
        disks.make_dir(self.root)
        self._domain_type = self._host.domain_type(self.virt_type)

    def cleanup_host(self) -> None:
        self._host.close()

    @property
    def daemon(self) -> Host:
        """This host's libvirtd connection: for tools and tests that read a
        guest's definition or the connection's state, not for flows."""
        return self._host

    @property
    def domain_type(self) -> str:
        if self._domain_type is None:
            self.init_host()
        assert self._domain_type is not None  # init_host found it or raised
        return self._domain_type

    @translated
    def get_available_resource(self) -> HostResources:
        cpus, ram_mb, hypervisor, version = self._host.resources()
        disks.make_dir(self.root)
        st = os.statvfs(self.root)
        return HostResources(
            vcpus=cpus,
            ram_mb=ram_mb,
            disk_gb=st.f_blocks * st.f_frsize // 1024**3,
            hypervisor=hypervisor,
            hypervisor_version=version,
        )

    @translated
    def inventory(self) -> Inventory:
        return Inventory(
            guests=tuple(sorted(g.uuid for g in self._own_guests())),
            disks=tuple(self._instance_files()),
            ports=tuple(sorted(self.ports.read())),
            base_images=tuple(self.images.list()),
        )

    @translated
    def host_report(self) -> base.HostReport:
        """Own guests with their power state; `cf-` domains without computeflow's
        metadata (someone else's, listed with no instance); the files under this
        host's directory by the instance directory they are in (anything else
        there is listed with no instance); kept (`{uuid}.resize`) and incoming
        (a copied domain.xml with no guest defined yet) copies; port records."""
        H = base.Held
        found: list[base.HeldResource] = []
        own: set[str] = set()
        for guest in self._host.list_guests():
            try:
                meta = guest.instance_metadata()
                if meta is not None and meta.host == self.host:
                    found.append(base.HeldResource(H.GUEST, guest.uuid, guest.uuid, guest.power_state(), guest.name))
                    own.add(guest.uuid)
                elif meta is None and guest.name.startswith(DOMAIN_PREFIX):
                    found.append(base.HeldResource(H.GUEST, guest.name, None, guest.power_state(), guest.name))
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone since listed
                    raise
        found += self._file_resources(own)
        found += [
            base.HeldResource(H.PORT, vif, p.get("instance"), detail=p.get("network", ""))
            for vif, p in sorted(self.ports.read().items())
        ]
        return base.HostReport(self.host, tuple(found))

    def _file_resources(self, own_guests: set[str]) -> list[base.HeldResource]:
        H = base.Held
        found: list[base.HeldResource] = []
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return found
        ports = os.path.basename(self.ports.path)
        for entry in entries:
            path = os.path.join(self.root, entry)
            uuid, kept = _instance_dir_uuid(entry)
            if not os.path.isdir(path) or uuid is None:
                if not _is_ports_file(entry, ports):
                    found.append(base.HeldResource(H.DISK, path, None, detail="not computeflow's"))
                continue
            if kept:
                found.append(base.HeldResource(H.KEPT_COPY, uuid, uuid, detail=path))
                continue
            try:
                files = sorted(os.listdir(path))
            except FileNotFoundError:  # removed or renamed to .resize since listed
                continue
            if resize.DOMAIN_XML in files and uuid not in own_guests:
                found.append(base.HeldResource(H.INCOMING_COPY, uuid, uuid, detail=path))
            found += [base.HeldResource(H.DISK, os.path.join(path, f), uuid, detail=f) for f in files]
        return found

    def _instance_files(self) -> list[str]:
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            if dirpath != self.root:  # the host's own files (ports) are not instance files
                found += [os.path.join(dirpath, f) for f in files]
        return sorted(found)

    # -- queries ------------------------------------------------------------
    def _owns(self, guest: Guest) -> bool:
        return guest.owned_by(self.host)

    def _own_guests(self) -> list[Guest]:
        owned = []
        for guest in self._host.list_guests():
            try:
                if self._owns(guest):
                    owned.append(guest)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone since listed
                    raise
        return owned

    def _find(self, instance_uuid: str) -> Guest | None:
        return self._host.find_owned_guest(instance_uuid)

    def _guest(self, instance_uuid: str) -> Guest:
        guest = self._find(instance_uuid)
        if guest is None:
            raise GuestNotFound(instance_uuid)
        return guest

    @translated
    def get_info(self, instance_uuid: str) -> GuestInfo:
        return self._guest(instance_uuid).info()

    @translated
    def list_instance_uuids(self) -> list[str]:
        return sorted(g.uuid for g in self._own_guests())

    @translated
    def get_console_output(self, instance_uuid: str) -> str:
        """The tail (up to 100 KiB) of the guest's serial console file."""
        self._guest(instance_uuid)
        try:
            with open(self._console_path(instance_uuid), "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - MAX_CONSOLE_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""  # never started (or the test driver, which writes no console)
        except OSError as e:  # libvirtd creates it 0600 root: a non-root conductor cannot read it
            raise DriverError(f"cannot read the console of {instance_uuid}: {e}") from None

    def get_instance_disk_info(self, instance_uuid: str) -> list[Disk]:
        found = []
        for kind in DiskKind:
            path = self._disk_path(instance_uuid, kind)
            if os.path.exists(path):
                i = disks.info(path)
                found.append(
                    Disk(
                        kind,
                        path,
                        i.virtual_size // disks.MIB,
                        i.backing_file,
                        preallocated=i.actual_size >= i.virtual_size,
                    )
                )
        return found

    # -- files --------------------------------------------------------------
    def _instance_dir(self, instance_uuid: str) -> str:
        return layout.instance_dir(self.root, instance_uuid)

    def _disk_path(self, instance_uuid: str, kind: DiskKind) -> str:
        return layout.disk_path(self.root, instance_uuid, kind)

    def _console_path(self, instance_uuid: str) -> str:
        return layout.console_path(self.root, instance_uuid)

    # -- spawn's pieces -----------------------------------------------------
    def ensure_base_image(self, image: Image) -> str:
        return self.images.ensure(image)

    def create_disk(self, instance_uuid: str, spec: DiskSpec) -> Disk:
        """Create one qcow2 disk; if it already exists as asked, return it as it is."""
        path = self._disk_path(instance_uuid, spec.kind)
        backing = backing_format = None
        if spec.kind is DiskKind.ROOT and spec.image is not None:
            backing = self.images.path(spec.image)
            backing_format = self.images.format(spec.image)
            if not os.path.exists(backing):
                raise InvalidGuestState(instance_uuid, "missing its base image", "create the root disk of")
            if spec.image.size_mb > spec.size_mb:
                raise RootDiskTooSmall(instance_uuid, spec.size_mb, spec.image.name, spec.image.size_mb)
            if not self.use_cow_images:
                backing = None
        fill = None
        if spec.kind is DiskKind.SWAP:
            fill = "swap"
        elif spec.kind is DiskKind.EPHEMERAL:
            fill = spec.fs_format or self.default_ephemeral_format
        disks.make_dir(os.path.dirname(path))
        with disks.path_lock(path):
            if not os.path.exists(path):
                if spec.kind is DiskKind.ROOT and spec.image is not None and backing is None:
                    self._copy_root(path, spec.image, spec, backing_format or "raw")
                else:
                    disks.create_qcow2(
                        path,
                        spec.size_mb,
                        backing=backing,
                        backing_format=backing_format,
                        preallocate=self.preallocate,
                        fill=fill,
                    )
            found = disks.info(path)
        if (found.format, found.virtual_size, found.backing_file) != ("qcow2", spec.size_mb * disks.MIB, backing):
            raise InvalidGuestState(
                instance_uuid,
                f"holding a different {spec.kind.value} disk at {path} ("
                f"{found.format}, {found.virtual_size} bytes, backing file {found.backing_file})",
                "create a disk for",
            )
        return Disk(spec.kind, path, spec.size_mb, backing, self.preallocate)

    def _copy_root(self, path: str, image: Image, spec: DiskSpec, source_format: str) -> None:
        """A root disk with no backing file: the base image converted, then grown."""
        disks.remove_stale(path)
        options = ["-o", "preallocation=falloc"] if self.preallocate else []
        with disks.publishing(path) as tmp:
            disks.run(
                [
                    "qemu-img",
                    "convert",
                    "-q",
                    "-f",
                    source_format,
                    "-O",
                    "qcow2",
                    *options,
                    self.images.path(image),
                    tmp,
                ]
            )
            disks.run(
                [
                    "qemu-img",
                    "resize",
                    "-q",
                    *(["--preallocation=falloc"] if self.preallocate else []),
                    tmp,
                    f"{spec.size_mb}M",
                ]
            )

    def delete_disk(self, instance_uuid: str, kind: DiskKind) -> None:
        path = self._disk_path(instance_uuid, kind)
        with disks.path_lock(path):
            disks.remove_stale(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(os.path.dirname(path))  # only once nothing else is left in it

    def delete_instance_files(self, instance_uuid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._instance_dir(instance_uuid))

    def plug_vif(self, instance_uuid: str, vif: Vif) -> None:
        with self.ports.change() as ports:
            ports.setdefault(
                vif.id, {"instance": instance_uuid, "mac": vif.mac, "network": vif.network, "tap": _tap_name(vif.id)}
            )

    def unplug_vif(self, instance_uuid: str, vif_id: str) -> None:
        with self.ports.change() as ports:
            ports.pop(vif_id, None)

    def wait_for_vif_plugged(self, instance_uuid: str, vif_ids: list[str], timeout: float) -> bool:
        """No network service sends events here: a port counts as plugged once recorded."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not set(vif_ids) <= set(self.ports.read()):
            if time.monotonic() >= deadline:
                return False
            pause.wait(_POLL_S)
        return True

    @translated
    def define_guest(self, spec: GuestSpec) -> None:
        """Define the domain; if one with the instance's uuid exists, keep it."""
        existing = self._host.find_guest(spec.instance_uuid)
        if existing is not None:
            if not self._owns(existing):
                raise InvalidGuestState(spec.instance_uuid, "defined by someone else", "define")
            return
        disks.make_dir(self._instance_dir(spec.instance_uuid))
        self._host.define_guest(self._domain_config(spec).to_xml())

    def _boot_config(self) -> OsConfig:
        if self.kernel:
            return OsConfig(kernel=self.kernel, initrd=self.initrd, cmdline=self.cmdline or DEFAULT_CMDLINE)
        return OsConfig(boot_dev="hd")

    def _domain_config(self, spec: GuestSpec) -> DomainConfig:
        os_config = self._boot_config()
        return DomainConfig(
            type=self.domain_type,
            name=DOMAIN_PREFIX + spec.instance_uuid,
            uuid=spec.instance_uuid,
            title=spec.name,
            memory_mb=spec.flavor.ram_mb,
            vcpus=spec.flavor.vcpus,
            os=os_config,
            disks=tuple(DiskConfig(d.path, f"vd{chr(ord('a') + i)}", "qcow2") for i, d in enumerate(spec.disks)),
            interfaces=tuple(self._interface(v) for v in spec.vifs),
            serial=SerialConfig(self._console_path(spec.instance_uuid)),
            metadata=InstanceMetadata(spec.name, self.host, spec.flavor.name),
        )

    def _interface(self, vif: Vif) -> InterfaceConfig:
        """On the libvirt network of the vif's name if one runs; else on a tap
        device of its own (which libvirt creates at start, removes at stop)."""
        if self._host.network_is_active(vif.network):
            return InterfaceConfig("network", vif.mac, network=vif.network)
        return InterfaceConfig("ethernet", vif.mac, target_dev=_tap_name(vif.id))

    @translated
    def undefine_guest(self, instance_uuid: str) -> None:
        """Remove the definition (and its console log); it must be stopped."""
        guest = self._find(instance_uuid)
        if guest is not None:
            if guest.is_active():
                raise InvalidGuestState(instance_uuid, guest.power_state().value, "undefine")
            guest.undefine()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._console_path(instance_uuid))
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(self._instance_dir(instance_uuid))

    # -- power --------------------------------------------------------------
    def _require(self, instance_uuid: str, guest: Guest, action: str, allowed: set[PowerState]) -> PowerState:
        state = guest.power_state()
        if state not in allowed:
            raise InvalidGuestState(instance_uuid, state.value, action)
        return state

    @translated
    def power_on(self, instance_uuid: str) -> None:
        guest = self._guest(instance_uuid)
        state = self._require(
            instance_uuid,
            guest,
            "power on",
            {PowerState.RUNNING, PowerState.SHUTDOWN, PowerState.CRASHED, PowerState.SUSPENDED},
        )
        if state is not PowerState.RUNNING:
            self._launch(guest)

    def _launch(self, guest: Guest) -> None:
        disks.make_dir(self._instance_dir(guest.uuid))  # the console file's directory
        try:
            guest.launch()
        except libvirt.libvirtError as e:
            # Started by someone else meanwhile: the end state is what was asked.
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or not guest.is_active():
                raise

    @translated
    def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        """Ask the guest to shut down and wait up to `timeout` s, then pull the plug."""
        guest = self._guest(instance_uuid)
        if not guest.is_active():
            guest.discard_saved_state()  # a suspended guest powers off by losing its saved RAM
            return
        if timeout > 0 and guest.power_state() is PowerState.RUNNING:
            guest.shutdown()
            if self._wait_stopped(guest, timeout):
                return
        guest.poweroff()

    def _wait_stopped(self, guest: Guest, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while guest.is_active():
            if time.monotonic() >= deadline:
                return False
            pause.wait(_POLL_S)
        return True

    @translated(repeatable=False)  # repeated after it took effect, it would boot twice
    def reboot(self, instance_uuid: str, hard: bool) -> None:
        """Soft: ACPI shutdown, then start again; SoftRebootFailed if the guest
        is not off within soft_reboot_timeout. Hard: from any state, a fresh boot."""
        guest = self._guest(instance_uuid)
        if not hard:
            self._require(instance_uuid, guest, "soft reboot", {PowerState.RUNNING})
            guest.shutdown()
            if not self._wait_stopped(guest, self.soft_reboot_timeout):
                raise SoftRebootFailed(
                    instance_uuid,
                    f"the guest did not shut down within {self.soft_reboot_timeout:g}s of the ACPI request",
                )
        else:
            guest.poweroff()
            guest.discard_saved_state()
        self._launch(guest)

    def soft_delete(self, instance_uuid: str) -> None:
        self.power_off(instance_uuid)

    def restore(self, instance_uuid: str) -> None:
        self.power_on(instance_uuid)

    @translated
    def pause(self, instance_uuid: str) -> None:
        guest = self._guest(instance_uuid)
        if self._require(instance_uuid, guest, "pause", {PowerState.RUNNING, PowerState.PAUSED}) is PowerState.RUNNING:
            guest.pause()

    @translated
    def unpause(self, instance_uuid: str) -> None:
        guest = self._guest(instance_uuid)
        if self._require(instance_uuid, guest, "unpause", {PowerState.RUNNING, PowerState.PAUSED}) is PowerState.PAUSED:
            guest.unpause()

    @translated
    def suspend(self, instance_uuid: str) -> None:
        """Save the guest's RAM to the daemon's managed-save file and stop it."""
        guest = self._guest(instance_uuid)
        if (
            self._require(instance_uuid, guest, "suspend", {PowerState.RUNNING, PowerState.SUSPENDED})
            is PowerState.RUNNING
        ):
            guest.save_to_host()

    @translated
    def resume(self, instance_uuid: str) -> None:
        guest = self._guest(instance_uuid)
        if (
            self._require(instance_uuid, guest, "resume", {PowerState.RUNNING, PowerState.SUSPENDED})
            is PowerState.SUSPENDED
        ):
            self._launch(guest)

    # -- snapshot (snapshot.py) ----------------------------------------------
    @translated
    def snapshot(self, instance_uuid: str, image_path: str) -> Image:
        """The root disk, flattened to a qcow2 at `image_path`; a running guest is
        paused for the copy (see snapshot.py)."""
        return snapshot.export_root_disk(
            self._guest(instance_uuid),
            self._instance_dir(instance_uuid),
            self._disk_path(instance_uuid, DiskKind.ROOT),
            image_path,
        )

    # -- cold resize and migration (resize.py) -------------------------------
    @translated
    def migrate_disk_and_power_off(self, instance_uuid: str, dest_host: str, flavor: base.Flavor) -> list[Disk]:
        """Stop the guest and copy its disks to `{instances_path}/{dest_host}/{uuid}`."""
        return resize.migrate_disk_and_power_off(self._host, self.root, self.ports, instance_uuid, dest_host, flavor)

    @translated
    def finish_migration(self, instance_uuid: str, disks: list[Disk], flavor: base.Flavor, power_on: bool) -> None:
        """Define (and start) the guest here from the copied disks, at the new flavor."""
        guest = resize.finish_migration(
            self._host,
            self.root,
            instance_uuid,
            disks,
            flavor,
            domain_type=self.domain_type,
            boot=self._boot_config(),
            preallocate=self.preallocate,
            ephemeral_format=self.default_ephemeral_format,
        )
        if power_on and not guest.is_active():
            self._launch(guest)

    @translated
    def confirm_migration(self, instance_uuid: str) -> None:
        resize.confirm_migration(self.host, self.root, self.ports, instance_uuid)

    @translated
    def finish_revert_migration(self, instance_uuid: str, power_on: bool) -> None:
        guest = resize.finish_revert_migration(self._host, self.root, self.ports, instance_uuid)
        if power_on and not guest.is_active():
            self._launch(guest)

    # -- live migration (drivers/libvirt/migration.py) ----------------------
    @translated
    def check_can_live_migrate_destination(self, instance_uuid: str, block_migration: bool) -> dict:
        return migration.check_destination(self._host, self.root, block_migration)

    def check_can_live_migrate_destination_cleanup(self, dest_check: dict) -> None:
        """The destination check leaves nothing behind."""

    @translated
    def check_can_live_migrate_source(self, instance_uuid: str, dest_check: dict) -> dict:
        guest = self._guest(instance_uuid)
        return migration.check_source(
            self._host, self.root, guest, instance_uuid, dest_check, permit_post_copy=self.permit_post_copy
        )

    @translated
    def pre_live_migration(self, instance_uuid: str, migrate_data: dict) -> dict:
        return migration.pre_migration(self.root, self.ports, instance_uuid, migrate_data)

    @translated
    def live_migration(self, instance_uuid: str, dest_host: str, migrate_data: dict, progress=None) -> None:
        migration.migrate(self._host, instance_uuid, dest_host, migrate_data, progress)

    @translated
    def live_migration_abort(self, instance_uuid: str) -> None:
        migration.abort(self._find(instance_uuid))

    @translated
    def live_migration_force_complete(self, instance_uuid: str) -> None:
        migration.force_complete(self._find(instance_uuid), permit_post_copy=self.permit_post_copy)

    def live_migration_force_complete_is_final(self, migrate_data: dict) -> bool:
        return migration.post_copy(migrate_data)

    @translated
    def rollback_live_migration_at_destination(self, instance_uuid: str, destroy_disks: bool) -> None:
        migration.rollback_at_destination(self._find(instance_uuid), self.ports, instance_uuid)
        if destroy_disks:
            self.delete_instance_files(instance_uuid)

    def post_live_migration(self, instance_uuid: str, migrate_data: dict) -> None:
        """No volumes to disconnect: instance disks are files copied by the migration."""

    @translated
    def post_live_migration_at_source(self, instance_uuid: str) -> None:
        migration.post_at_source(self._find(instance_uuid), self.ports, instance_uuid)
        self.delete_instance_files(instance_uuid)

    @translated
    def post_live_migration_at_destination(self, instance_uuid: str) -> None:
        migration.post_at_destination(self._host, self._guest(instance_uuid), instance_uuid)

    # -- evacuate: is the dead host's storage this one's? ------------------------
    # Files only, no daemon: the source of an evacuation is down. Each host keeps its
    # files under its own {instances_path}/{host}, so two hosts see each other's marker
    # only when their directories are one (a shared mount named alike on both machines).
    def check_instance_shared_storage_local(self, instance_uuid: str) -> dict:
        """Leave a marker file in this host's instance directory."""
        disks.make_dir(self.root)
        name = f"{_SHARED_CHECK}{uuidlib.UUID(instance_uuid)}"
        with open(os.path.join(self.root, name), "a"):
            pass
        return {"filename": name}

    def check_instance_shared_storage_remote(self, data: dict) -> bool:
        """Whether this host sees the other host's marker: then they share storage."""
        return os.path.exists(os.path.join(self.root, _marker_name(data)))

    def check_instance_shared_storage_cleanup(self, data: dict) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.root, _marker_name(data)))

    # -- events -------------------------------------------------------------
    def _on_lifecycle(self, guest: Guest, event: int, _detail: int) -> None:
        """On the Host's dispatcher thread. The event says something changed;
        what is reported is the guest's state now, so a late event cannot
        report a state the guest has already left."""
        if event in _IGNORED_EVENTS or not self._owns(guest):
            return
        self.emit_event(LifecycleEvent(guest.uuid, guest.power_state(), self.host))


def _instance_dir_uuid(entry: str) -> tuple[str | None, bool]:
    """(instance uuid, is a kept resize copy) of a directory name under a
    host's root; (None, False) if it is not an instance directory."""
    kept = entry.endswith(resize.RESIZE_SUFFIX)
    name = entry[: -len(resize.RESIZE_SUFFIX)] if kept else entry
    try:
        canonical = str(uuidlib.UUID(name))
    except ValueError:
        return None, False
    return (canonical, kept) if canonical == name else (None, False)


def _is_ports_file(entry: str, ports: str) -> bool:
    """The port records, their lock, or a temporary file of a write (disks.tmp_name)."""
    return entry in (ports, ports + ".lock") or (entry.startswith(ports + ".") and entry.endswith(".tmp"))


_SHARED_CHECK = ".shared-check-"


def _marker_name(data: dict) -> str:
    name = str(data.get("filename", ""))
    if not name.startswith(_SHARED_CHECK) or "/" in name:
        raise DriverError(f"not a shared-storage marker: {name!r}")
    return name


def _tap_name(vif_id: str) -> str:
    return "tap" + vif_id[:11]  # interface names are at most 15 characters
