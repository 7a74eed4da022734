"""Building the configuration: every package's options on one ConfigOpts."""
from __future__ import annotations

from oslo_config import cfg

import drivers.options
import flows.options
import persistence.options
from conductor import options
from drivers.faults import FaultPlan
from persistence.session import Database, sqlite_file


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
    except (cfg.Error, ValueError) as e:
        raise ConfigError(f"configuration: {e}") from None
    return conf


def _touch_all(conf: cfg.ConfigOpts) -> None:
    for name in conf:
        value = conf[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for sub in value:
                getattr(value, sub)


def embedded_database(conf: cfg.ConfigOpts) -> bool:
    """Whether [database] connection is the embedded default, the SQLite file
    under state_path: the only database created implicitly on first use. Any
    other missing file is likelier a typo; `computeflow db upgrade` creates it."""
    return sqlite_file(conf.database.connection) == \
        sqlite_file(f"sqlite:///{conf.state_path}/computeflow.sqlite")


def open_database(conf: cfg.ConfigOpts, *, create: bool | None = None) -> Database:
    """The configured database, reachable (DatabaseUnreachable, DatabaseMissing
    otherwise); create: None means only the embedded default is created."""
    db = Database(conf.database.connection, pool_size=conf.database.pool_size,
                  connect_timeout=conf.database.connect_timeout,
                  create=embedded_database(conf) if create is None else create)
    db.check_reachable()
    return db
