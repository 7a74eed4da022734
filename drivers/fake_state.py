"""The fake hypervisor's state: one crash-atomic JSON file per host.

Every change is a read-modify-write of that file under an exclusive lock
(a process lock across processes, a thread lock within one), written to a
temporary file, fsynced and renamed into place: a process killed at any
instant leaves either the old or the new state, never a torn one. Apart from
`drivers/fake.py` so the file's format and its atomicity are read in one
place, and so tests read a host's state without a driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator

_EMPTY_STATE: dict[str, dict] = {
    "guests": {},
    "disks": {},
    "ports": {},
    "base_images": {},
    "volumes": {},
    # cold migration: a source's copy kept for a revert, a destination's copy
    # waiting for finish_migration (see migrate_disk_and_power_off)
    "migrating": {},
    "incoming": {},
}
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
