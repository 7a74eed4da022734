"""Where a computeflow host keeps an instance's files (see driver.py's docstring).

Functions of the host's root (`{instances_path}/{host}`) rather than driver
methods, so that the helpers that move instances between hosts (resize.py,
migration.py) can find the files from that one path.
"""

from __future__ import annotations

import os
import uuid as uuidlib

from drivers.base import DiskKind
from drivers.errors import GuestNotFound

CONSOLE_LOG = "console.log"


def instance_dir(root: str, instance_uuid: str) -> str:
    """`{root}/{uuid}`; GuestNotFound for what is not a uuid (never a path outside root)."""
    try:
        canonical = str(uuidlib.UUID(instance_uuid))
    except ValueError:
        raise GuestNotFound(instance_uuid) from None
    return os.path.join(root, canonical)


def disk_path(root: str, instance_uuid: str, kind: DiskKind) -> str:
    return os.path.join(instance_dir(root, instance_uuid), f"disk.{kind.value}")


def console_path(root: str, instance_uuid: str) -> str:
    return os.path.join(instance_dir(root, instance_uuid), CONSOLE_LOG)
