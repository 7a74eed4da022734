"""Disk files: the base-image cache and instance disks, made with qemu-img.

Every file is built under a temporary name in its final directory, synced,
then renamed into place, so a process killed half way leaves either nothing or
a stray `*.tmp` under the final name's directory (which the next attempt and
the delete calls remove), never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from drivers.base import Image
from drivers.errors import DriverError, ImageNotFound

MIB = 1024 * 1024
#: Directories qemu (running as its own user under qemu:///system) must traverse.
DIR_MODE = 0o755
_MKFS_FORCE = {"ext2": ["-F", "-q"], "ext3": ["-F", "-q"], "ext4": ["-F", "-q"], "xfs": ["-f", "-q"]}


class DiskCommandFailed(DriverError):
    """qemu-img, mkfs or mkswap failed (or is not installed)."""

    def __init__(self, command: list[str], reason: str) -> None:
        super().__init__(f"{' '.join(command)}: {reason}")
        self.command = command


@dataclass(frozen=True)
class DiskFileInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    backing_format: str | None


#: Run each command under `setpriv --pdeathsig KILL` (util-linux): if the conductor is
#: killed, its qemu-img / mkswap / cp dies with it instead of writing a temporary
#: file after the resuming process has cleaned up. The signal follows the calling
#: thread, which waits for the command, so it only fires when the process dies.
_DIE_WITH_CALLER = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


def run(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        raise DiskCommandFailed(command, f"{command[0]} is not installed (Debian: qemu-utils)")
    try:
        done = subprocess.run([*_DIE_WITH_CALLER, *command], capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DiskCommandFailed(command, f"{command[0]} is not installed (Debian: qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise DiskCommandFailed(command, "timed out") from None
    if done.returncode != 0:
        raise DiskCommandFailed(command, done.stderr.strip() or f"exit status {done.returncode}")
    return done.stdout


def info(path: str) -> DiskFileInfo:
    """What qemu-img reads from a disk file; -U: also while a running guest holds its lock."""
    data = json.loads(run(["qemu-img", "info", "-U", "--output=json", path]))
    return DiskFileInfo(
        data["format"],
        data["virtual-size"],
        data.get("actual-size", 0),
        data.get("full-backing-filename") or data.get("backing-filename"),
        data.get("backing-filename-format"),
    )


def make_dir(path: str) -> None:
    """Create a directory QEMU can traverse; an existing one keeps the mode its owner chose."""
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, DIR_MODE)


def tmp_name(final: str) -> str:
    return f"{final}.{os.getpid()}.{threading.get_ident()}.tmp"


_path_locks: dict[str, threading.Lock] = {}
_path_locks_guard = threading.Lock()


def path_lock(path: str) -> threading.Lock:
    """A lock serialising this process's threads that build or remove `path`."""
    with _path_locks_guard:
        return _path_locks.setdefault(os.path.abspath(path), threading.Lock())


def remove_stale(final: str) -> None:
    """Remove what interrupted attempts at `final` left behind: temporary files
    (`*.tmp`, and the `*.tmp.raw` a formatted disk is built in) of dead processes,
    and of this one (whose threads hold `path_lock(final)`)."""
    pattern = glob.escape(final)
    for stale in glob.glob(pattern + ".*.tmp") + glob.glob(pattern + ".*.tmp.*"):
        try:
            pid = int(stale[len(final) + 1 :].split(".", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def publishing(final: str) -> Iterator[str]:
    """Yield a temporary path to build `final` in; on success it is synced and
    renamed to `final`, on failure removed."""
    tmp = tmp_name(final)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(os.path.dirname(final), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ImageCache:
    """Base images shared by the instances of a host, one file per image name."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, image: Image) -> str:
        if not image.name or "/" in image.name or image.name.startswith("."):
            raise ImageNotFound(image.name)
        return os.path.join(self.directory, image.name)

    @staticmethod
    def format(image: Image) -> str:
        """The format of the cached file: a copied image keeps its declared
        format (never probed: a raw image could pose as qcow2); an image without
        a file is materialised as an empty raw disk."""
        return image.disk_format if image.path else "raw"

    def ensure(self, image: Image) -> str:
        final = self.path(image)
        if image.path is not None and not os.path.isfile(image.path):
            raise ImageNotFound(image.name)  # e.g. a snapshot whose file is gone
        want = os.path.getsize(image.path) if image.path else image.size_mb * MIB
        if _size(final) == want:
            return final
        make_dir(self.directory)
        with path_lock(final):
            if _size(final) == want:  # another thread cached it meanwhile
                return final
            remove_stale(final)
            self._publish(image, final, want)
        return final

    @staticmethod
    def _publish(image: Image, final: str, want: int) -> None:
        with publishing(final) as tmp:
            if image.path:
                shutil.copyfile(image.path, tmp)
            else:
                with open(tmp, "wb") as f:
                    f.truncate(want)  # sparse
            if os.path.getsize(tmp) != want:
                raise DiskCommandFailed(["copy", image.path or "", tmp], "size mismatch after copy")

    def list(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if not n.endswith(".tmp"))
        except FileNotFoundError:
            return []


def create_qcow2(
    final: str,
    size_mb: int,
    *,
    backing: str | None = None,
    backing_format: str | None = None,
    preallocate: bool = False,
    fill: str | None = None,
) -> None:
    """Create a qcow2 disk at `final` (the caller holds `path_lock(final)`).

    `backing`: copy-on-write overlay over that file. `fill`: a filesystem type
    (ext4, xfs, vfat...) or 'swap' to initialise the disk with; the content is
    built in a raw file first and converted.
    """
    remove_stale(final)
    options = []
    if preallocate:
        options.append("preallocation=falloc")
        if backing:
            options.append("extended_l2=on")  # qemu refuses preallocated overlays without it
    with publishing(final) as tmp:
        if fill is None:
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
            if backing:
                cmd += ["-b", backing, "-F", backing_format or "raw"]
            if options:
                cmd += ["-o", ",".join(options)]
            run(cmd + [tmp, f"{size_mb}M"])
            return
        raw = tmp + ".raw"
        try:
            with open(raw, "wb") as f:
                f.truncate(size_mb * MIB)
            if fill == "swap":
                run(["mkswap", raw])
            else:
                run(["mkfs", "-t", fill, *_MKFS_FORCE.get(fill, []), raw])
            cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2"]
            if options:
                cmd += ["-o", ",".join(options)]
            run(cmd + [raw, tmp])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(raw)


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


def export_flat(source: str, final: str, *, force_share: bool = False) -> DiskFileInfo:
    """Write `source` (with its whole backing chain) to `final` as a self-contained
    qcow2, built under a temporary name. `force_share`: read while a QEMU
    process holds the image's lock (the caller makes sure it is not writing)."""
    make_dir(os.path.dirname(final))
    with path_lock(final):
        remove_stale(final)
        with publishing(final) as tmp:
            run(["qemu-img", "convert", "-q", *(["-U"] if force_share else []), "-O", "qcow2", source, tmp])
    return info(final)


def copy_file(source: str, final: str) -> None:
    """Copy one file (a disk, sparse as it is) to `final`, built under a temporary
    name; an existing `final` of the same size is taken as an earlier, complete copy
    (files only ever appear under their final name complete)."""
    if _size(final) is not None and _size(final) == _size(source):
        return
    make_dir(os.path.dirname(final))
    with path_lock(final):
        remove_stale(final)
        with publishing(final) as tmp:
            run(["cp", "--sparse=always", "--preserve=mode", source, tmp])
