"""Options that shape how flows behave."""
from oslo_config import cfg

flow_opts = [
    cfg.BoolOpt(
        "vif_plugging_is_fatal",
        default=True,
        help="Fail (and revert) a spawn whose vif-plugged events do not arrive "
        "within vif_plugging_timeout. False: log it and boot anyway.",
    ),
    cfg.IntOpt(
        "vif_plugging_timeout",
        default=300,
        min=0,
        help="Seconds to wait for the network to report every vif plugged. "
        "0 with vif_plugging_is_fatal=False: do not wait at all.",
    ),
    cfg.IntOpt(
        "boot_timeout",
        default=300,
        min=1,
        help="Seconds a spawned guest may take to reach the running state.",
    ),
    cfg.StrOpt(
        "image_store_path",
        default="$state_path/images",
        help="Local image store: where snapshots are written. Each snapshot is "
        "a file here plus a row in the images table, usable by a later spawn.",
    ),
    cfg.BoolOpt(
        "allow_resize_to_same_host",
        default=False,
        help="Let a resize stay on the instance's own host when it has room "
        "(it then holds the old and the new flavor until confirm or revert). "
        "A migration always goes to another host.",
    ),
    cfg.IntOpt(
        "forward_retries",
        default=5,
        min=1,
        help="Attempts of a forward-only phase (destroy) before the operation "
        "stops and the instance is put in ERROR for an operator.",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(flow_opts)
