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
    return [("DEFAULT", options.driver_opts), ("fake", options.fake_opts), ("libvirt", options.libvirt_opts)]


def load_driver(conf: cfg.ConfigOpts, host: str, driver: str, uri: str | None = None) -> ComputeDriver:
    """Instantiate the named driver for one host, honouring the seed options."""
    if driver == "fake":
        from drivers.fake import FakeDriver
        from drivers.latency import LatencyModel

        fake = FakeDriver(
            host,
            conf.fake.state_dir,
            use_cow_images=conf.use_cow_images,
            preallocate_images=conf.preallocate_images,
            default_ephemeral_format=conf.default_ephemeral_format,
            deliver_vif_events=conf.fake.deliver_vif_events,
            shared_storage_peers=next(
                (tuple(g.split("+")) for g in conf.fake.shared_storage if host in g.split("+")), ()
            ),
        )
        model = LatencyModel.parse(conf.fake.latency, conf.fake.latency_distribution, conf.fake.latency_seed)
        return model.apply(fake) if model else fake
    if driver == "libvirt":
        from drivers.libvirt.driver import LibvirtDriver  # imports libvirt-python: only here

        opts = conf.libvirt
        uri = uri or opts.uri
        if not uri:
            raise ValueError(f"libvirt host {host!r} has no URI: add it with one or set [libvirt] uri")
        return LibvirtDriver(
            host,
            uri,
            instances_path=opts.instances_path,
            base_images_path=opts.base_images_path,
            use_cow_images=conf.use_cow_images,
            preallocate_images=conf.preallocate_images,
            virt_type=opts.virt_type,
            kernel=opts.guest_kernel,
            initrd=opts.guest_initrd,
            cmdline=opts.guest_cmdline,
            default_ephemeral_format=conf.default_ephemeral_format,
            soft_reboot_timeout=opts.soft_reboot_timeout,
            permit_post_copy=opts.live_migration_permit_post_copy,
            reconnect_timeout=opts.reconnect_timeout,
        )
    raise ValueError(f"unknown compute driver {driver!r} (known: {', '.join(DRIVER_NAMES)})")
