"""Building the configuration: every package's options on one ConfigOpts."""
from __future__ import annotations

from oslo_config import cfg

import drivers.options
import flows.options
import persistence.options
from conductor import options
from drivers.faults import FaultPlan
from drivers.latency import LatencyModel


class ConfigError(Exception):
    pass


def new_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    options.register(conf)
    persistence.options.register(conf)
    drivers.options.register(conf)
    flows.options.register(conf)
    return conf


def load(config_files: list[str] | None = None, overrides: dict | None = None) -> cfg.ConfigOpts:
    """Parse config files (default: oslo's standard search path for computeflow).

    Every option is read once here, so a malformed file or a bad value fails
    now, with the file and option named, before anything is touched.
    """
    conf = new_conf()
    args = []
    for f in config_files or []:
        args += ["--config-file", f]
    try:
        conf(args, project="computeflow", default_config_files=None if config_files is None else [])
        for (group, key), value in (overrides or {}).items():
            conf.set_override(key, value, None if group in (None, "DEFAULT") else group)
        _touch_all(conf)
        FaultPlan(conf.fake.faults)  # a bad fault spec is a config error, caught here
        LatencyModel.parse(conf.fake.latency, conf.fake.latency_distribution)  # likewise
    except (cfg.Error, ValueError) as e:
        raise ConfigError(f"configuration: {e}") from None
    return conf


def _touch_all(conf: cfg.ConfigOpts) -> None:
    for name in conf:
        value = conf[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for sub in value:
                getattr(value, sub)
