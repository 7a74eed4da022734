"""Snapshot: a guest's root disk exported to the image store as a flat qcow2.

A running guest is paused for the copy. When QEMU stops the vCPUs it drains
and flushes every block device, so what is copied is the disk as it was at
that instant (crash-consistent: as if the power had been cut), and the guest
stops only for as long as the copy takes. A stopped or suspended guest is
copied as it is; a guest its user paused stays paused.

A crash while the snapshot holds the guest paused must not leave it paused
for good: a marker file in the instance directory says "this pause is the
snapshot's", written before pausing and removed after unpausing. The next
attempt (a crashed step runs again) sees the marker and unpauses the guest
when it is done, as the first attempt would have.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from drivers.base import Image, PowerState
from drivers.errors import InvalidGuestState
from drivers.libvirt import disks
from drivers.libvirt.guest import Guest

PAUSE_MARKER = "snapshot-paused"


@contextlib.contextmanager
def quiesced(guest: Guest, instance_dir: str) -> Iterator[bool]:
    """Hold the guest still for a copy of its disks; yield whether QEMU has the disk open."""
    marker = os.path.join(instance_dir, PAUSE_MARKER)
    state = guest.power_state()
    ours = os.path.exists(marker)  # an earlier attempt paused it and died
    if state is PowerState.RUNNING:
        with open(marker, "w"):
            pass
        guest.pause()
        ours = True
    try:
        yield guest.is_active()
    finally:
        if ours:
            if guest.power_state() is PowerState.PAUSED:
                guest.unpause()
            os.unlink(marker)


def export_root_disk(guest: Guest, instance_dir: str, root: str, image_path: str) -> Image:
    """Copy the root disk at `root` to `image_path` (atomically) and describe the image."""
    if not os.path.exists(root):
        raise InvalidGuestState(guest.uuid, "without a root disk", "snapshot")
    with quiesced(guest, instance_dir) as in_use:
        found = disks.export_flat(root, image_path, force_share=in_use)
    return Image(os.path.basename(image_path), "qcow2", found.virtual_size // disks.MIB, image_path)
