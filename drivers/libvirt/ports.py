"""The ports (host side of a guest's interfaces) a libvirt host holds.

libvirt itself creates a guest's tap device when the guest starts and removes
it when the guest stops, so what `plug_vif` creates is a record: which port
belongs to which instance, with its MAC and network. The records live in one
JSON file per host, changed under a lock and replaced atomically, so a process
killed at any moment leaves the old or the new set, never a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from drivers.libvirt.disks import path_lock, publishing


class PortRecords:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_path = path + ".lock"

    def read(self) -> dict[str, dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def change(self) -> Iterator[dict[str, dict]]:
        """Yield the records for editing; written back on exit if they changed."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with path_lock(self.path), open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # other processes driving this host
            records = self.read()
            before = json.dumps(records, sort_keys=True)
            yield records
            if json.dumps(records, sort_keys=True) == before:
                return
            with publishing(self.path) as tmp:
                with open(tmp, "w") as f:
                    json.dump(records, f, indent=1, sort_keys=True)
