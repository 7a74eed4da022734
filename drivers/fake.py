"""A fake hypervisor whose state lives in one JSON file per host.

Every change is a read-modify-write of that file under an exclusive lock,
written to a temporary file, fsynced and renamed into place: a process killed
at any instant leaves either the old or the new state, never a torn one. That
is what lets the crash tests ask `inventory()` whether anything leaked.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator

from drivers import base
from drivers.base import Disk, DiskKind, DiskSpec, GuestInfo, GuestSpec, Image, Inventory, PowerState, Vif
from drivers.errors import (GuestNotFound, ImageNotFound, InvalidGuestState, SoftRebootFailed,
                            VolumeInUse)

_EMPTY_STATE = {"guests": {}, "disks": {}, "ports": {}, "base_images": {}, "volumes": {}}
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(path, threading.Lock())


class HostStateFile:
    """Crash-atomic JSON state of one fake host."""

    def __init__(self, directory: str, host: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{host}.json")
        self._lock_path = self.path + ".lock"

    def read(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return json.loads(json.dumps(_EMPTY_STATE))

    @contextlib.contextmanager
    def change(self) -> Iterator[dict]:
        """Yield the state for editing; it is written back atomically on exit."""
        with _thread_lock(self.path), open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            for key, empty in _EMPTY_STATE.items():  # files written by older releases
                state.setdefault(key, type(empty)())
            yield state
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


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
    ) -> None:
        super().__init__(host)
        self.state = HostStateFile(state_dir, host)
        self.use_cow_images = use_cow_images
        self.preallocate = preallocate_images == "space"
        self.default_ephemeral_format = default_ephemeral_format
        self.deliver_vif_events = deliver_vif_events
        self._instances_dir = os.path.join(state_dir, host, "instances")
        self._base_dir = os.path.join(state_dir, host, "_base")

    # -- host ---------------------------------------------------------------
    def get_available_resource(self) -> base.HostResources:
        return base.HostResources(vcpus=1024, ram_mb=1 << 22, disk_gb=1 << 16, hypervisor="fake")

    def inventory(self) -> Inventory:
        s = self.state.read()
        return Inventory(
            guests=tuple(sorted(s["guests"])),
            disks=tuple(sorted(s["disks"])),
            ports=tuple(sorted(s["ports"])),
            base_images=tuple(sorted(s["base_images"])),
            volumes=tuple(sorted(s.get("volumes", {}))),
        )

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
        fs_format = spec.fs_format or (
            self.default_ephemeral_format if spec.kind is DiskKind.EPHEMERAL else None
        )
        record = {
            "instance": instance_uuid,
            "kind": spec.kind.value,
            "size_mb": spec.size_mb,
            "backing": backing,
            "preallocated": self.preallocate,
            "fs_format": fs_format,
            "image": spec.image.name if spec.image is not None else None,
        }
        with self.state.change() as s:
            if backing and spec.image.name not in s["base_images"]:
                raise InvalidGuestState(instance_uuid, "missing base image", "create a COW disk")
            s["disks"].setdefault(path, record)
        return _disk(path, record)

    def delete_disk(self, instance_uuid: str, kind: DiskKind) -> None:
        with self.state.change() as s:
            s["disks"].pop(self._disk_path(instance_uuid, kind), None)

    def plug_vif(self, instance_uuid: str, vif: Vif) -> None:
        with self.state.change() as s:
            s["ports"].setdefault(
                vif.id, {"instance": instance_uuid, "mac": vif.mac, "network": vif.network}
            )

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
        with self.state.change() as s:
            for path in [p for p, d in s["disks"].items() if d["instance"] == instance_uuid]:
                del s["disks"][path]

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
        self._set_power(instance_uuid, PowerState.RUNNING,
                        {PowerState.SHUTDOWN, PowerState.CRASHED, PowerState.SUSPENDED}, "power on")

    def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        self._set_power(instance_uuid, PowerState.SHUTDOWN,
                        {PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED,
                         PowerState.SUSPENDED}, "power off")

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
                g["rescue"] = {"image": rescue_image.name,
                               "disk": self._disk_path(instance_uuid, DiskKind.ROOT) + ".rescue"}
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
            s["ports"].setdefault(
                vif.id, {"instance": instance_uuid, "mac": vif.mac, "network": vif.network})
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

    # -- events (tests drive these to simulate a guest acting on its own) ---
    def simulate_unresponsive_guest(self, instance_uuid: str) -> None:
        with self.state.change() as s:
            self._guest(s, instance_uuid)["ignores_acpi"] = True

    def simulate_guest_stopped(self, instance_uuid: str) -> None:
        with self.state.change() as s:
            self._guest(s, instance_uuid)["power_state"] = PowerState.SHUTDOWN.value
        self.emit_event(base.LifecycleEvent(instance_uuid, PowerState.SHUTDOWN, self.host))


def _digest(secret: str | None) -> str | None:
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


def _disk(path: str, d: dict) -> Disk:
    return Disk(DiskKind(d["kind"]), path, d["size_mb"], d["backing"], d["preallocated"])
