"""What steps need at run time that must never be persisted.

taskflow persists everything given to an engine's store, so the database,
drivers and secret box reach steps through a runtime instead. Each Conductor
has one; while it runs an operation (and while it prepares a submission) its
runtime is the active one in a ContextVar, which the elastic thread pools copy
into every task they run, so a step finds its own conductor's runtime even
with two Conductors open in one process. Outside such a scope, `current()`
falls back to the process default: the oldest Conductor still open.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from oslo_config import cfg

import drivers
from drivers.base import ComputeDriver
from drivers.faults import FaultPlan
from persistence import hosts
from persistence.secrets import SecretBox
from persistence.session import Database


@dataclass
class Runtime:
    conf: cfg.ConfigOpts
    db: Database
    secrets: SecretBox
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: Called with each driver this process creates (the conductor registers
    #: its lifecycle-event listener through it).
    on_new_driver: list[Callable[[ComputeDriver], None]] = field(default_factory=list)
    _drivers: dict[str, ComputeDriver] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def driver_for(self, host: str) -> ComputeDriver:
        """The driver of one host, created once per process."""
        with self._lock:
            drv = self._drivers.get(host)
            if drv is None:
                with self.db.session() as s:
                    h = hosts.get_host(s, host)
                    if h is None:
                        raise LookupError(f"host {host!r} is not registered")
                    drv = drivers.load_driver(self.conf, h.name, h.driver, h.uri)
                drv.init_host()
                for hook in self.on_new_driver:
                    hook(drv)
                self._drivers[host] = drv
            return drv

    def close_drivers(self) -> None:
        """Release every driver's connection (libvirt: the connection and its event thread)."""
        with self._lock:
            drivers_, self._drivers = list(self._drivers.values()), {}
        for drv in drivers_:
            drv.cleanup_host()


_active: ContextVar[Runtime | None] = ContextVar("computeflow_runtime", default=None)
_open: list[Runtime] = []  # installed and not yet uninstalled, oldest first
_open_lock = threading.Lock()


def install(rt: Runtime) -> None:
    """Register an open runtime; the oldest open one is the process default."""
    with _open_lock:
        if not any(r is rt for r in _open):
            _open.append(rt)


def uninstall(rt: Runtime) -> None:
    """Withdraw `rt` (closing twice is harmless); the next oldest becomes the default."""
    with _open_lock:
        _open[:] = [r for r in _open if r is not rt]


@contextlib.contextmanager
def active(rt: Runtime) -> Iterator[Runtime]:
    """Make `rt` the runtime of this context (and of the pool tasks it submits)."""
    token = _active.set(rt)
    try:
        yield rt
    finally:
        _active.reset(token)


def current() -> Runtime:
    rt = _active.get() or (_open[0] if _open else None)
    if rt is None:
        raise RuntimeError("no computeflow runtime installed in this process")
    return rt
