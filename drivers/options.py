"""Driver options: the seed contract's options plus the fake driver's own."""
from oslo_config import cfg

driver_opts = [
    cfg.StrOpt(
        "compute_driver",
        default="fake",
        choices=[("fake", "on-disk fake hypervisor"), ("libvirt", "libvirt-python")],
        help="Driver given to hosts added without an explicit --driver.",
    ),
    cfg.StrOpt(
        "default_ephemeral_format",
        help="Filesystem an ephemeral disk is formatted with when it is created "
        "(e.g. ext4). Unset: the driver's own default.",
    ),
    cfg.StrOpt(
        "preallocate_images",
        default="none",
        choices=[("none", "allocate storage as the guest writes"),
                 ("space", "allocate every disk's full size when it is created")],
        help="Storage preallocation for instance disks.",
    ),
    cfg.BoolOpt(
        "use_cow_images",
        default=True,
        help="Create root disks as copy-on-write overlays over a cached base "
        "image instead of full copies.",
    ),
]

fake_opts = [
    cfg.StrOpt(
        "state_dir",
        default="$state_path/fake",
        help="Where the fake driver keeps each host's hypervisor state.",
    ),
    cfg.ListOpt(
        "faults",
        default=[],
        help="Faults to inject, each STEP:PHASE:ACTION[:WHEN] with PHASE execute "
        "or revert, ACTION fail, fail-once, hang or kill, WHEN before (default) "
        "or after the step's side effect. For tests and demos only.",
    ),
    cfg.BoolOpt(
        "deliver_vif_events",
        default=True,
        help="Whether the fake network reports vif-plugged events. False makes "
        "spawn wait vif_plugging_timeout for an event that never arrives.",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(driver_opts)
    conf.register_opts(fake_opts, group="fake")
