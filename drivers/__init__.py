"""Hypervisor drivers: the contract (base.py) and its implementations.

This package imports none of computeflow's other packages.
"""
from __future__ import annotations

from oslo_config import cfg

from drivers import options
from drivers.base import ComputeDriver

DRIVER_NAMES = ("fake", "libvirt")


def list_opts():
    """Options for oslo-config-generator."""
    return [("DEFAULT", options.driver_opts), ("fake", options.fake_opts)]


def load_driver(conf: cfg.ConfigOpts, host: str, driver: str, uri: str | None = None) -> ComputeDriver:
    """Instantiate the named driver for one host, honouring the seed options."""
    if driver == "fake":
        from drivers.fake import FakeDriver

        return FakeDriver(
            host,
            conf.fake.state_dir,
            use_cow_images=conf.use_cow_images,
            preallocate_images=conf.preallocate_images,
            default_ephemeral_format=conf.default_ephemeral_format,
            deliver_vif_events=conf.fake.deliver_vif_events,
        )
    raise ValueError(f"unknown compute driver {driver!r} (known: {', '.join(DRIVER_NAMES)})")
