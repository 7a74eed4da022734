"""A fake hypervisor whose state lives in one JSON file per host.

Every change is a locked, crash-atomic read-modify-write of that file
(drivers/fake_state.py): a process killed at any instant leaves either the
old or the new state, never a torn one. That is what lets the crash tests ask
`inventory()` whether anything leaked.

One module (~730 lines) on purpose: it implements the whole driver contract
against one state file, and every method is a few lines over the same locked
read-modify-write; split by operation (cold and live migration, devices),
each part would reach into the same private helpers of the driver (`_guest`,
`_disk_path`, its directories), the kind of coupling STYLE.md asks helpers
not to have.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading

from drivers import base
from drivers.base import Disk, DiskKind, DiskSpec, GuestInfo, GuestSpec, Image, Inventory, PowerState, Vif
from drivers.errors import DriverError, GuestNotFound, ImageNotFound, InvalidGuestState, SoftRebootFailed, VolumeInUse
from drivers.fake_state import HostStateFile


class FakeDriver(base.ComputeDriver):
    """On-disk fake hypervisor: real bookkeeping, no guests."""

    name = "fake"

    def __init__(
        self,
        host: str,
        state_dir: str,
        *,
        use_cow_images: bool = True,
        preallocate_images: str = "none",
        default_ephemeral_format: str | None = None,
        deliver_vif_events: bool = True,
        shared_storage_peers: tuple[str, ...] = (),
    ) -> None:
        super().__init__(host)
        self.state = HostStateFile(state_dir, host)
        self.use_cow_images = use_cow_images
        self.preallocate = preallocate_images == "space"
        self.default_ephemeral_format = default_ephemeral_format
        self.deliver_vif_events = deliver_vif_events
        self._instances_dir = os.path.join(state_dir, host, "instances")
        #: Hosts that see this host's instance storage (a shared pool of disks).
        self.shared_storage_peers = tuple(p for p in shared_storage_peers if p != host)
        if self.shared_storage_peers:
            pool = "+".join(sorted({host, *self.shared_storage_peers}))
            self._instances_dir = os.path.join(state_dir, "_shared", pool, "instances")
        self._base_dir = os.path.join(state_dir, host, "_base")

    # -- host ---------------------------------------------------------------
    def get_available_resource(self) -> base.HostResources:
        return base.HostResources(vcpus=1024, ram_mb=1 << 22, disk_gb=1 << 16, hypervisor="fake")

    def inventory(self) -> Inventory:
        s = self.state.read()
        return Inventory(
            guests=tuple(sorted(s["guests"])) + _set_aside(s, "guest"),
            disks=tuple(sorted(s["disks"])) + _set_aside(s, "disks"),
            ports=tuple(sorted(s["ports"])) + _set_aside(s, "ports"),
            base_images=tuple(sorted(s["base_images"])),
            volumes=tuple(sorted(s.get("volumes", {}))),
        )

    def host_report(self) -> base.HostReport:
        """One read of the state file; every record carries its instance."""
        s = self.state.read()
        H = base.Held
        found = [
            base.HeldResource(H.GUEST, uuid, uuid, PowerState(g["power_state"]), g.get("name", ""))
            for uuid, g in s["guests"].items()
        ]
        found += [base.HeldResource(H.DISK, path, d["instance"], detail=d["kind"]) for path, d in s["disks"].items()]
        found += [
            base.HeldResource(H.PORT, vif, p["instance"], detail=p.get("network", "")) for vif, p in s["ports"].items()
        ]
        found += [
            base.HeldResource(H.VOLUME, vol, a["instance"], detail=a.get("mountpoint", ""))
            for vol, a in s.get("volumes", {}).items()
        ]
        found += [
            base.HeldResource(H.KEPT_COPY, uuid, uuid, detail=f"for {m['dest']}") for uuid, m in s["migrating"].items()
        ]
        found += [
            base.HeldResource(H.INCOMING_COPY, uuid, uuid, detail=f"from {m['source']}")
            for uuid, m in s["incoming"].items()
        ]
        found += [
            base.HeldResource(H.GUEST, name, None, PowerState(g["power_state"]), name)
            for name, g in s.get("foreign_guests", {}).items()
        ]
        return base.HostReport(self.host, tuple(found))

    # -- queries ------------------------------------------------------------
    def _guest(self, state: dict, instance_uuid: str) -> dict:
        try:
            return state["guests"][instance_uuid]
        except KeyError:
            raise GuestNotFound(instance_uuid) from None

    def get_info(self, instance_uuid: str) -> GuestInfo:
        g = self._guest(self.state.read(), instance_uuid)
        return GuestInfo(PowerState(g["power_state"]), g["vcpus"], g["memory_mb"])

    def list_instance_uuids(self) -> list[str]:
        return sorted(self.state.read()["guests"])

    def get_instance_disk_info(self, instance_uuid: str) -> list[Disk]:
        return [_disk(p, d) for p, d in self.state.read()["disks"].items() if d["instance"] == instance_uuid]

    def get_console_output(self, instance_uuid: str) -> str:
        g = self._guest(self.state.read(), instance_uuid)
        return f"fake console of {g['name']}: {g['power_state']}\n"

    # -- spawn's pieces -----------------------------------------------------
    def ensure_base_image(self, image: Image) -> str:
        path = os.path.join(self._base_dir, image.name)
        if image.path is not None and not os.path.exists(image.path):
            raise ImageNotFound(image.name)  # e.g. a snapshot whose file is gone
        with self.state.change() as s:
            s["base_images"].setdefault(image.name, {"path": path, "size_mb": image.size_mb})
        return path

    def _disk_path(self, instance_uuid: str, kind: DiskKind) -> str:
        return os.path.join(self._instances_dir, instance_uuid, f"disk.{kind.value}")

    def create_disk(self, instance_uuid: str, spec: DiskSpec) -> Disk:
        path = self._disk_path(instance_uuid, spec.kind)
        backing = None
        if spec.kind is DiskKind.ROOT and spec.image is not None and self.use_cow_images:
            backing = os.path.join(self._base_dir, spec.image.name)
        fs_format = spec.fs_format or (self.default_ephemeral_format if spec.kind is DiskKind.EPHEMERAL else None)
        record = {
            "instance": instance_uuid,
            "kind": spec.kind.value,
            "size_mb": spec.size_mb,
            "backing": backing,
            "preallocated": self.preallocate,
            "fs_format": fs_format,
            "image": spec.image.name if spec.image is not None else None,
        }
        shared = self._shared_disk(path)
        if shared is not None:  # already on the storage this host shares: use it as it is
            record, backing = shared, None
        with self.state.change() as s:
            if backing and spec.image is not None and spec.image.name not in s["base_images"]:
                raise InvalidGuestState(instance_uuid, "missing base image", "create a COW disk")
            s["disks"].setdefault(path, record)
        return _disk(path, record)

    def delete_disk(self, instance_uuid: str, kind: DiskKind) -> None:
        with self.state.change() as s:
            s["disks"].pop(self._disk_path(instance_uuid, kind), None)

    def plug_vif(self, instance_uuid: str, vif: Vif) -> None:
        with self.state.change() as s:
            s["ports"].setdefault(vif.id, {"instance": instance_uuid, "mac": vif.mac, "network": vif.network})

    def unplug_vif(self, instance_uuid: str, vif_id: str) -> None:
        with self.state.change() as s:
            s["ports"].pop(vif_id, None)

    def wait_for_vif_plugged(self, instance_uuid: str, vif_ids: list[str], timeout: float) -> bool:
        ports = self.state.read()["ports"]
        if self.deliver_vif_events and all(v in ports for v in vif_ids):
            return True
        # The event never comes: wait the whole timeout as a real network would make us.
        threading.Event().wait(timeout)
        return False

    def define_guest(self, spec: GuestSpec) -> None:
        record = {
            "name": spec.name,
            "power_state": PowerState.SHUTDOWN.value,
            "vcpus": spec.flavor.vcpus,
            "memory_mb": spec.flavor.ram_mb,
            "disks": [d.path for d in spec.disks],
            "vifs": [v.id for v in spec.vifs],
            # A real driver hands the password to the guest; we keep only a digest
            # so tests can verify it without the clear text ever touching disk.
            "admin_password_sha256": _digest(spec.admin_password),
        }
        with self.state.change() as s:
            s["guests"].setdefault(spec.instance_uuid, record)

    def undefine_guest(self, instance_uuid: str) -> None:
        with self.state.change() as s:
            g = s["guests"].get(instance_uuid)
            if g is None:
                return
            if g["power_state"] in (PowerState.RUNNING.value, PowerState.PAUSED.value):
                raise InvalidGuestState(instance_uuid, g["power_state"], "undefine")
            del s["guests"][instance_uuid]
            # The domain's device attachments go with it.
            for vol in [v for v, a in s["volumes"].items() if a["instance"] == instance_uuid]:
                del s["volumes"][vol]

    def delete_instance_files(self, instance_uuid: str) -> None:
        """The instance's disks here, and a migration copy still waiting for
        finish_migration (its files are in this host's instances path too)."""
        with self.state.change() as s:
            for path in [p for p, d in s["disks"].items() if d["instance"] == instance_uuid]:
                del s["disks"][path]
            s["incoming"].pop(instance_uuid, None)

    def instance_on_disk(self, instance_uuid: str) -> bool:
        return False

    # -- power --------------------------------------------------------------
    def _set_power(self, instance_uuid: str, target: PowerState, allowed_from: set[PowerState], action: str) -> None:
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            current = PowerState(g["power_state"])
            if current is target:
                return
            if current not in allowed_from:
                raise InvalidGuestState(instance_uuid, current.value, action)
            g["power_state"] = target.value

    def power_on(self, instance_uuid: str) -> None:
        self._set_power(
            instance_uuid,
            PowerState.RUNNING,
            {PowerState.SHUTDOWN, PowerState.CRASHED, PowerState.SUSPENDED},
            "power on",
        )

    def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        self._set_power(
            instance_uuid,
            PowerState.SHUTDOWN,
            {PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED, PowerState.SUSPENDED},
            "power off",
        )

    def reboot(self, instance_uuid: str, hard: bool) -> None:
        """Soft: the guest must be running and answer ACPI. Hard: from any state."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            if not hard:
                if g["power_state"] != PowerState.RUNNING.value:
                    raise InvalidGuestState(instance_uuid, g["power_state"], "soft reboot")
                if g.get("ignores_acpi"):
                    raise SoftRebootFailed(instance_uuid, "the guest ignored the ACPI request")
            g["power_state"] = PowerState.RUNNING.value
            g["boots"] = g.get("boots", 1) + 1

    def soft_delete(self, instance_uuid: str) -> None:
        self.power_off(instance_uuid)

    def restore(self, instance_uuid: str) -> None:
        self.power_on(instance_uuid)

    def pause(self, instance_uuid: str) -> None:
        self._set_power(instance_uuid, PowerState.PAUSED, {PowerState.RUNNING}, "pause")

    def unpause(self, instance_uuid: str) -> None:
        self._set_power(instance_uuid, PowerState.RUNNING, {PowerState.PAUSED}, "unpause")

    def suspend(self, instance_uuid: str) -> None:
        self._set_power(instance_uuid, PowerState.SUSPENDED, {PowerState.RUNNING}, "suspend")

    def resume(self, instance_uuid: str) -> None:
        self._set_power(instance_uuid, PowerState.RUNNING, {PowerState.SUSPENDED}, "resume")

    # -- rescue, rebuild, snapshot -----------------------------------------
    def rescue(self, instance_uuid: str, rescue_image: Image) -> None:
        """Boot from the rescue image; the original disks stay attached."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            if g.get("rescue") is None:
                g["rescue"] = {
                    "image": rescue_image.name,
                    "disk": self._disk_path(instance_uuid, DiskKind.ROOT) + ".rescue",
                }
            g["power_state"] = PowerState.RUNNING.value

    def unrescue(self, instance_uuid: str) -> None:
        """Boot from the original disk again; no-op when not rescued."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            if g.pop("rescue", None) is not None:
                g["power_state"] = PowerState.RUNNING.value

    def snapshot(self, instance_uuid: str, image_path: str) -> Image:
        """Write a file describing the root disk to `image_path`, atomically."""
        s = self.state.read()
        self._guest(s, instance_uuid)
        root = s["disks"].get(self._disk_path(instance_uuid, DiskKind.ROOT))
        if root is None:
            raise InvalidGuestState(instance_uuid, "without a root disk", "snapshot")
        os.makedirs(os.path.dirname(image_path), exist_ok=True)
        tmp = f"{image_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"instance": instance_uuid, "root": root}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, image_path)
        return Image(os.path.basename(image_path), "qcow2", root["size_mb"], image_path)

    def rebuild(self, instance_uuid: str, image: Image, preserve_ephemeral: bool) -> None:
        """Re-create the root disk from `image` (ephemeral data kept if asked) and boot."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            root = s["disks"].get(self._disk_path(instance_uuid, DiskKind.ROOT))
            if root is None:
                raise InvalidGuestState(instance_uuid, "without a root disk", "rebuild")
            if root.get("backing") and image.name not in s["base_images"]:
                raise InvalidGuestState(instance_uuid, "missing base image", "rebuild")
            root["image"] = image.name
            if root.get("backing"):
                root["backing"] = os.path.join(self._base_dir, image.name)
            eph = s["disks"].get(self._disk_path(instance_uuid, DiskKind.EPHEMERAL))
            if eph is not None and not preserve_ephemeral:
                eph["image_of_data"] = image.name  # re-created empty for this image
            elif eph is not None:
                eph.pop("image_of_data", None)
            g["power_state"] = PowerState.RUNNING.value

    # -- cold migration (resize, migrate) and shared storage -----------------
    def _host_state(self, host: str) -> HostStateFile:
        """Another fake host's state file: every fake host lives in one state_dir."""
        return HostStateFile(os.path.dirname(self.state.path), host)

    def migrate_disk_and_power_off(self, instance_uuid: str, dest_host: str, flavor: base.Flavor) -> list[Disk]:
        """Stop the guest here and copy its disks to `dest_host`.

        The guest, disks, ports and volume attachments are set aside in this
        host's `migrating` (kept for a revert until confirm_migration); the
        copy waits in the destination's `incoming` for finish_migration. The
        source is changed first and names the destination, so a re-run after
        a crash, and finish_revert_migration, find the copy.
        """
        with self.state.change() as s:
            m = s["migrating"].get(instance_uuid)
            if m is None:
                g = self._guest(s, instance_uuid)
                g["power_state"] = PowerState.SHUTDOWN.value
                m = {
                    "dest": dest_host,
                    "guest": s["guests"].pop(instance_uuid),
                    **{k: _take(s[k], instance_uuid) for k in ("disks", "ports", "volumes")},
                }
                root = next((d for d in m["disks"].values() if d["kind"] == "root"), None)
                image = root and root.get("image")
                m["base_images"] = {image: s["base_images"][image]} if image in s["base_images"] else {}
                s["migrating"][instance_uuid] = m
        with self._host_state(m["dest"]).change() as d:
            if instance_uuid not in d["guests"]:
                d["incoming"].setdefault(
                    instance_uuid,
                    {
                        "source": self.host,
                        "guest": m["guest"],
                        "disks": m["disks"],
                        "volumes": m["volumes"],
                        "base_images": m["base_images"],
                    },
                )
        return [_disk(p, d) for p, d in m["disks"].items()]

    def finish_migration(self, instance_uuid: str, disks: list[Disk], flavor: base.Flavor, power_on: bool) -> None:
        """Set up the incoming copy here: disks sized for `flavor` (a root disk
        never shrinks), the guest defined with it, and started if asked."""
        with self.state.change() as s:
            g = s["guests"].get(instance_uuid)
            incoming = s["incoming"].pop(instance_uuid, None)
            if g is None:
                if incoming is None:
                    raise InvalidGuestState(instance_uuid, f"not migrating to {self.host}", "finish the migration of")
                by_kind = {d["kind"]: d for d in incoming["disks"].values()}
                sizes = {
                    "root": max(flavor.root_gb * 1024, by_kind.get("root", {}).get("size_mb", 0)),
                    "ephemeral": flavor.ephemeral_gb * 1024,
                    "swap": flavor.swap_mb,
                }
                paths = []
                for kind, size in sizes.items():
                    if not size:
                        continue
                    rec = dict(
                        by_kind.get(kind)
                        or {
                            "instance": instance_uuid,
                            "kind": kind,
                            "backing": None,
                            "image": None,
                            "preallocated": self.preallocate,
                            "fs_format": None,
                        }
                    )
                    rec["size_mb"] = size
                    if rec.get("backing"):
                        rec["backing"] = os.path.join(self._base_dir, rec["image"])
                    path = self._disk_path(instance_uuid, DiskKind(kind))
                    s["disks"][path] = rec
                    paths.append(path)
                for image, cached in incoming["base_images"].items():
                    s["base_images"].setdefault(image, {**cached, "path": os.path.join(self._base_dir, image)})
                g = {
                    **incoming["guest"],
                    "vcpus": flavor.vcpus,
                    "memory_mb": flavor.ram_mb,
                    "disks": paths,
                    "power_state": PowerState.SHUTDOWN.value,
                }
                s["guests"][instance_uuid] = g
                s["volumes"].update(incoming["volumes"])
            if power_on:
                g["power_state"] = PowerState.RUNNING.value

    def confirm_migration(self, instance_uuid: str) -> None:
        """Delete the source copy kept for a revert; no-op once gone."""
        with self.state.change() as s:
            s["migrating"].pop(instance_uuid, None)

    def finish_revert_migration(self, instance_uuid: str, power_on: bool) -> None:
        """Put the source copy back (dropping a copy still waiting at the
        destination) and start the guest if asked. The destination's own
        guest must be gone first when it is this very host."""
        m = self.state.read()["migrating"].get(instance_uuid)
        if m is not None:
            with self._host_state(m["dest"]).change() as d:
                d["incoming"].pop(instance_uuid, None)
        with self.state.change() as s:
            m = s["migrating"].get(instance_uuid)
            if m is not None:
                if instance_uuid in s["guests"]:
                    raise InvalidGuestState(
                        instance_uuid, "still defined by the migration here", "revert the migration of"
                    )
                del s["migrating"][instance_uuid]
                s["guests"][instance_uuid] = m["guest"]
                for k in ("disks", "ports", "volumes"):
                    s[k].update(m[k])
            g = s["guests"].get(instance_uuid)
            if power_on and g is not None:
                g["power_state"] = PowerState.RUNNING.value

    def _storage_dir(self) -> str:
        return os.path.dirname(self._instances_dir)

    def check_instance_shared_storage_local(self, instance_uuid: str) -> dict:
        """Leave a marker file where this host keeps instance disks."""
        os.makedirs(self._storage_dir(), exist_ok=True)
        name = f".shared-check-{instance_uuid}"
        with open(os.path.join(self._storage_dir(), name), "a"):
            pass
        return {"filename": name}

    def check_instance_shared_storage_remote(self, data: dict) -> bool:
        """Does this host see the other host's marker? Then their storage is shared."""
        return os.path.exists(os.path.join(self._storage_dir(), data["filename"]))

    def check_instance_shared_storage_cleanup(self, data: dict) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self._storage_dir(), data["filename"]))

    def _shared_disk(self, path: str) -> dict | None:
        """A disk another host of this storage pool already has at `path`."""
        for peer in self.shared_storage_peers:
            rec = self._host_state(peer).read()["disks"].get(path)
            if rec is not None:
                return dict(rec)
        return None

    # -- devices ------------------------------------------------------------
    def attach_volume(self, instance_uuid: str, connection_info: dict, mountpoint: str) -> None:
        vol = connection_info["volume_id"]
        with self.state.change() as s:
            self._guest(s, instance_uuid)
            held = s["volumes"].get(vol)
            if held is not None and held["instance"] != instance_uuid:
                raise VolumeInUse(vol, held["instance"])
            s["volumes"][vol] = {"instance": instance_uuid, "mountpoint": mountpoint}

    def detach_volume(self, instance_uuid: str, connection_info: dict, mountpoint: str) -> None:
        vol = connection_info["volume_id"]
        with self.state.change() as s:
            if s["volumes"].get(vol, {}).get("instance") == instance_uuid:
                del s["volumes"][vol]

    def swap_volume(self, instance_uuid: str, old_info: dict, new_info: dict, mountpoint: str) -> None:
        """Replace the volume at `mountpoint`; idempotent once the new one is there."""
        old, new = old_info["volume_id"], new_info["volume_id"]
        with self.state.change() as s:
            self._guest(s, instance_uuid)
            held = s["volumes"].get(new)
            if held is not None and held["instance"] != instance_uuid:
                raise VolumeInUse(new, held["instance"])
            if s["volumes"].get(old, {}).get("instance") == instance_uuid:
                del s["volumes"][old]
            s["volumes"][new] = {"instance": instance_uuid, "mountpoint": mountpoint}

    def attach_interface(self, instance_uuid: str, vif: Vif) -> None:
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            s["ports"].setdefault(vif.id, {"instance": instance_uuid, "mac": vif.mac, "network": vif.network})
            if vif.id not in g["vifs"]:
                g["vifs"].append(vif.id)

    def detach_interface(self, instance_uuid: str, vif_id: str) -> None:
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            s["ports"].pop(vif_id, None)
            if vif_id in g["vifs"]:
                g["vifs"].remove(vif_id)

    # -- guest agent --------------------------------------------------------
    def set_admin_password(self, instance_uuid: str, password: str) -> None:
        with self.state.change() as s:
            self._guest(s, instance_uuid)["admin_password_sha256"] = _digest(password)

    def inject_file(self, instance_uuid: str, path: str, contents: bytes) -> None:
        """Keep only a digest of the contents, as for passwords."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            g.setdefault("files", {})[path] = hashlib.sha256(contents).hexdigest()

    def change_instance_metadata(self, instance_uuid: str, changes: dict[str, str | None]) -> None:
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            meta = g.setdefault("metadata", {})
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            if not meta:
                del g["metadata"]

    # -- live migration -----------------------------------------------------
    # A fake migration lives in the process that runs it, as a real one lives
    # in its hypervisor: each poll advances it by `live_migration_step_pct`
    # (never past a guest's `stall_at`, set by simulate_memory_churn), and
    # abort / force-complete requests are seen at the next poll. A killed
    # process loses the job; running live_migration again starts it afresh,
    # or finishes a switch-over that the kill interrupted.
    live_migration_step_pct = 25
    live_migration_poll_s = 0.02

    def _requests(self) -> dict[str, str]:
        """Abort / force-complete requests for migrations this process runs."""
        return self.__dict__.setdefault("_migration_requests", {})

    def check_can_live_migrate_destination(self, instance_uuid: str, block_migration: bool) -> dict:
        return {"dest_host": self.host, "block_migration": block_migration}

    def check_can_live_migrate_destination_cleanup(self, dest_check: dict) -> None:
        """The fake's destination check leaves nothing behind."""

    def check_can_live_migrate_source(self, instance_uuid: str, dest_check: dict) -> dict:
        g = self._guest(self.state.read(), instance_uuid)
        if dest_check["dest_host"] == self.host:
            raise InvalidGuestState(instance_uuid, f"already on {self.host}", "live-migrate")
        if g["power_state"] not in (PowerState.RUNNING.value, PowerState.PAUSED.value):
            raise InvalidGuestState(instance_uuid, g["power_state"], "live-migrate")
        return {**dest_check, "source_host": self.host, "post_copy": g.get("post_copy", False)}

    def pre_live_migration(self, instance_uuid: str, migrate_data: dict) -> dict:
        """Make the instance's disks (over this host's base images) and ports here."""
        src = self._host_state(migrate_data["source_host"]).read()
        with self.state.change() as s:
            for d in [d for d in src["disks"].values() if d["instance"] == instance_uuid]:
                rec = dict(d)
                if d.get("backing"):
                    rec["backing"] = os.path.join(self._base_dir, d["image"])
                    s["base_images"].setdefault(d["image"], {"path": rec["backing"], "size_mb": d["size_mb"]})
                s["disks"].setdefault(self._disk_path(instance_uuid, DiskKind(d["kind"])), rec)
            for vif, port in src["ports"].items():
                if port["instance"] == instance_uuid:
                    s["ports"].setdefault(vif, dict(port))
        return migrate_data

    def live_migration(self, instance_uuid: str, dest_host: str, migrate_data: dict, progress=None) -> None:
        dest = self._host_state(dest_host)
        if instance_uuid in dest.read()["guests"]:
            self._leave_source(instance_uuid)  # switched over already (maybe before a kill)
            return
        pause = threading.Event()
        pct = 0
        self._requests().pop(instance_uuid, None)
        while pct < 100:
            g = self._guest(self.state.read(), instance_uuid)
            request = self._requests().pop(instance_uuid, None)
            if request == "abort":
                raise DriverError(f"live migration of {instance_uuid} aborted")
            if request == "force":
                pct = 100
            else:
                pct = min(100, pct + self.live_migration_step_pct, g.get("stall_at", 100))
            if progress is not None:
                progress(pct)
            if pct < 100:
                pause.wait(self.live_migration_poll_s)
        record = dict(g)
        # The disks pre_live_migration made there, in the guest's order.
        made = {os.path.basename(p): p for p, d in dest.read()["disks"].items() if d["instance"] == instance_uuid}
        record["disks"] = [made.get(os.path.basename(p), p) for p in g["disks"]]
        volumes = {v: a for v, a in self.state.read()["volumes"].items() if a["instance"] == instance_uuid}
        with dest.change() as d:
            d["guests"].setdefault(instance_uuid, record)
            d["volumes"].update(volumes)
        self._leave_source(instance_uuid)

    def _leave_source(self, instance_uuid: str) -> None:
        with self.state.change() as s:
            s["guests"].pop(instance_uuid, None)
            for vol in [v for v, a in s["volumes"].items() if a["instance"] == instance_uuid]:
                del s["volumes"][vol]

    def live_migration_abort(self, instance_uuid: str) -> None:
        """Ask the running migration to stop at its next poll; no-op without one."""
        self._requests()[instance_uuid] = "abort"

    def live_migration_force_complete(self, instance_uuid: str) -> None:
        """Let the running migration switch over at its next poll."""
        self._requests()[instance_uuid] = "force"

    def live_migration_force_complete_is_final(self, migrate_data: dict) -> bool:
        """As libvirt's post-copy, for a guest set up by simulate_memory_churn(post_copy=True)."""
        return bool(migrate_data.get("post_copy"))

    def rollback_live_migration_at_destination(self, instance_uuid: str, destroy_disks: bool) -> None:
        """Remove what pre_live_migration (or a migration) left on this host."""
        with self.state.change() as s:
            s["guests"].pop(instance_uuid, None)
            for vif in [v for v, p in s["ports"].items() if p["instance"] == instance_uuid]:
                del s["ports"][vif]
            for vol in [v for v, a in s["volumes"].items() if a["instance"] == instance_uuid]:
                del s["volumes"][vol]
            if destroy_disks:
                for path in [p for p, d in s["disks"].items() if d["instance"] == instance_uuid]:
                    del s["disks"][path]

    def post_live_migration(self, instance_uuid: str, migrate_data: dict) -> None:
        """Disconnect the source from the instance's volumes (they moved with the guest)."""
        self._leave_source(instance_uuid)

    def post_live_migration_at_source(self, instance_uuid: str) -> None:
        """The guest runs elsewhere: drop its disks and ports here."""
        with self.state.change() as s:
            if instance_uuid in s["guests"]:
                raise InvalidGuestState(
                    instance_uuid, f"still defined on {self.host}", "clean up the migration source of"
                )
            for vif in [v for v, p in s["ports"].items() if p["instance"] == instance_uuid]:
                del s["ports"][vif]
            for path in [p for p, d in s["disks"].items() if d["instance"] == instance_uuid]:
                del s["disks"][path]

    def post_live_migration_at_destination(self, instance_uuid: str) -> None:
        """The guest must be here and running (or paused, as it was)."""
        g = self._guest(self.state.read(), instance_uuid)
        if g["power_state"] not in (PowerState.RUNNING.value, PowerState.PAUSED.value):
            raise InvalidGuestState(instance_uuid, g["power_state"], "finish the migration of")

    def simulate_memory_churn(self, instance_uuid: str, stall_at: int, post_copy: bool = False) -> None:
        """The guest dirties memory faster than it is copied: a live migration
        stops progressing at `stall_at` percent until aborted or forced. With
        `post_copy` the migration is started able to switch to post-copy, so
        that force-complete is final (as on libvirt with permit_post_copy)."""
        with self.state.change() as s:
            g = self._guest(s, instance_uuid)
            g["stall_at"] = stall_at
            g["post_copy"] = post_copy

    # -- drift (tests and demos plant what an operator's hand would leave) ---
    def simulate_foreign_guest(self, name: str) -> None:
        """A guest someone else defined on this host, without computeflow's marks."""
        with self.state.change() as s:
            s.setdefault("foreign_guests", {})[name] = {"power_state": PowerState.RUNNING.value}

    def simulate_undefine_by_hand(self, instance_uuid: str) -> None:
        """`virsh undefine` behind computeflow's back: the guest goes, its disks
        and ports stay."""
        with self.state.change() as s:
            s["guests"].pop(instance_uuid, None)

    # -- events (tests drive these to simulate a guest acting on its own) ---
    def simulate_unresponsive_guest(self, instance_uuid: str) -> None:
        with self.state.change() as s:
            self._guest(s, instance_uuid)["ignores_acpi"] = True

    def simulate_guest_stopped(self, instance_uuid: str, crashed: bool = False) -> None:
        """The guest stopped by itself: shut down, or crashed (its emulator died)."""
        state = PowerState.CRASHED if crashed else PowerState.SHUTDOWN
        with self.state.change() as s:
            self._guest(s, instance_uuid)["power_state"] = state.value
        self.emit_event(base.LifecycleEvent(instance_uuid, state, self.host))


def _take(section: dict, instance_uuid: str) -> dict:
    """Remove and return an instance's entries of a state section."""
    mine = {k: v for k, v in section.items() if v["instance"] == instance_uuid}
    for k in mine:
        del section[k]
    return mine


def _set_aside(state: dict, what: str) -> tuple[str, ...]:
    """What migrations hold outside the live sections, for inventory()."""
    found = []
    for uuid, m in state["migrating"].items():
        found += [f"{uuid} (resize source)"] if what == "guest" else [f"{k} (resize source)" for k in m[what]]
    for uuid, m in state["incoming"].items():
        found += [f"{uuid} (incoming)"] if what == "guest" else [f"{k} (incoming)" for k in m.get(what, {})]
    return tuple(sorted(found))


def _digest(secret: str | None) -> str | None:
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


def _disk(path: str, d: dict) -> Disk:
    return Disk(DiskKind(d["kind"]), path, d["size_mb"], d["backing"], d["preallocated"])
