"""What steps need at run time that must never be persisted.

taskflow persists everything given to an engine's store, so the database,
drivers and secret box reach steps through this process-wide runtime instead.
A conductor installs one at start-up; tests install their own.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
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


_current: Runtime | None = None


def install(rt: Runtime) -> None:
    global _current
    _current = rt


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no computeflow runtime installed in this process")
    return _current
