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


# Every step's deadline and retries (read by flows/steps/attempts.py);
# registered in [conductor] by conductor/options.py.
step_opts = [
    cfg.FloatOpt(
        "step_timeout",
        default=3600.0,
        min=0,
        help="Seconds one attempt of a step's execute or revert may take; a "
        "step past it fails (and the operation reverts). 0: no deadline. Must "
        "exceed vif_plugging_timeout and boot_timeout, which steps wait for, "
        "and the longest legitimate driver call (a live migration or snapshot "
        "of a large guest); a step class may set its own `step_timeout`.",
    ),
    cfg.IntOpt(
        "step_retry_attempts",
        default=3,
        min=1,
        help="Attempts of a step whose driver error is transient (e.g. the "
        "hypervisor is unavailable) before the step fails. 1: no retry.",
    ),
    cfg.FloatOpt(
        "step_retry_base_delay",
        default=1.0,
        min=0,
        help="Seconds before the first retry of a transient error; doubled before each further retry.",
    ),
    cfg.FloatOpt(
        "step_retry_max_delay",
        default=30.0,
        min=0,
        help="Upper bound of the delay between two retries, in seconds.",
    ),
    cfg.FloatOpt(
        "database_outage_tolerance",
        default=60.0,
        min=0,
        help="Seconds a step whose own database write finds the server "
        "unreachable (restart, failover) keeps retrying before it fails and the "
        "operation reverts. 0: fail at once.",
    ),
]
