"""Who runs an operation: conductor identities and telling a dead one."""

from __future__ import annotations

import os
import socket


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def my_identity() -> str:
    """hostname:pid:start-time; the start time tells a reused pid apart."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def is_dead(owner: str) -> bool:
    """True only when certain: a local owner whose process no longer exists.

    Owners on other hosts are judged by their lease alone.
    """
    try:
        host, pid, ticks = owner.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    return _start_ticks(int(pid)) != ticks
