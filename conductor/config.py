"""Building the configuration: every package's options on one ConfigOpts."""

from __future__ import annotations

import difflib

from oslo_config import cfg, types

from computeflow.errors import ComputeflowError
import drivers.options
import flows.options
import persistence.options
from conductor import host_limits, options
from drivers.faults import Fault, FaultPlan
from drivers.latency import LatencyModel
from flows import catalog
from persistence.session import Database, sqlite_file


class ConfigError(ComputeflowError):
    """The configuration cannot be used: which file, section, option and why."""


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
        _touch_all(conf, list(conf.config_file or []))
        FaultPlan(conf.fake.faults)  # a bad fault spec is a config error, caught here
        LatencyModel.parse(conf.fake.latency, conf.fake.latency_distribution)  # likewise
        _check_fault_steps(conf.fake.faults)
        host_limits.parse_per_kind(conf.conductor.max_concurrent_per_host)
    except (cfg.Error, ValueError) as e:
        raise ConfigError(f"configuration: {e}") from None
    return conf


def _check_fault_steps(specs: list[str]) -> None:
    """A fault at a step no operation has would never fire: refuse it, with
    the step names it is closest to (drivers/ cannot know the flows' steps)."""
    for spec in specs:
        if not spec.strip():
            continue
        step = Fault.parse(spec).step
        if catalog.kinds_with_step(step):
            continue
        close = difflib.get_close_matches(step, catalog.step_names(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `computeflow ops show` lists an operation's steps"
        raise ConfigError(
            f"configuration: [fake] faults: fault {spec.strip()!r}: no operation has a step {step!r}{hint}"
        )


def idle_faults_warning(conf: cfg.ConfigOpts, kind: str) -> str | None:
    """One line when faults are armed but none names a step of `kind`'s flow
    (e.g. power_on:... armed for a power-on, whose step is power_on_guest)."""
    steps = [Fault.parse(s).step for s in conf.fake.faults if s.strip()]
    if not steps or any(kind in catalog.kinds_with_step(step) for step in steps):
        return None
    return (
        f"no fault in [fake] faults ({', '.join(steps)}) names a step of {kind}, so none "
        f"fires; its steps: {', '.join(catalog.get(kind).steps)}"
    )


def _touch_all(conf: cfg.ConfigOpts, files: list[str]) -> None:
    """Read every option, so that a bad value fails here, named in the
    operator's terms (oslo's own message shows its internal location objects)."""
    for name in conf:
        try:
            value = conf[name]
        except cfg.ConfigFileValueError:
            raise ConfigError(_bad_value(conf, None, name, files)) from None
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for sub in value:
                try:
                    getattr(value, sub)
                except cfg.ConfigFileValueError:
                    raise ConfigError(_bad_value(conf, name, sub, files)) from None


def _bad_value(conf: cfg.ConfigOpts, group: str | None, name: str, files: list[str]) -> str:
    """`configuration: [group] name = 'value' in FILE: expected ...`, one line."""
    section = group or "DEFAULT"
    where, raw = "", None
    for f in reversed(files):  # the last file that sets it wins, as in oslo
        sections: dict = {}
        try:
            cfg.ConfigParser(f, sections).parse()
        except (OSError, cfg.ParseError):
            continue
        values = sections.get(section, {}).get(name)
        if values:
            where, raw = f" in {f}", values[-1]
            break
    opt = conf._get_opt_info(name, group)["opt"]  # noqa: SLF001 - oslo has no public getter
    shown = "" if raw is None else f" = {raw!r}"
    return f"configuration: [{section}] {name}{shown}{where}: expected {expected(opt.type)}"


def expected(t: types.ConfigType) -> str:
    """What an option of type `t` accepts, in words."""
    choices = getattr(t, "choices", None)
    if choices:
        names = [c[0] if isinstance(c, tuple) else c for c in choices]
        return "one of " + ", ".join(str(c) for c in names)
    if isinstance(t, types.Boolean):
        return "true or false"
    if isinstance(t, (types.Integer, types.Float)):
        kind = "an integer" if isinstance(t, types.Integer) else "a number"
        low, high = getattr(t, "min", None), getattr(t, "max", None)
        if low is not None and high is not None:
            return f"{kind} between {low} and {high}"
        if low is not None:
            return f"{kind} >= {low}"
        return f"{kind} <= {high}" if high is not None else kind
    if isinstance(t, types.Dict):
        return "KEY:VALUE pairs separated by commas"
    if isinstance(t, types.List):
        return "a comma-separated list"
    if isinstance(t, types.String) and t.regex is not None:
        return f"a string matching {t.regex.pattern}"
    return f"a {t.type_name}" if getattr(t, "type_name", None) else "a valid value"


def embedded_database(conf: cfg.ConfigOpts) -> bool:
    """Whether [database] connection is the embedded default, the SQLite file
    under state_path: the only database created implicitly on first use. Any
    other missing file is likelier a typo; `computeflow db upgrade` creates it."""
    return sqlite_file(conf.database.connection) == sqlite_file(f"sqlite:///{conf.state_path}/computeflow.sqlite")


def open_database(conf: cfg.ConfigOpts, *, create: bool | None = None) -> Database:
    """The configured database, reachable (DatabaseUnreachable, DatabaseMissing
    otherwise); create: None means only the embedded default is created."""
    db = Database(
        conf.database.connection,
        pool_size=conf.database.pool_size,
        connect_timeout=conf.database.connect_timeout,
        create=embedded_database(conf) if create is None else create,
    )
    db.check_reachable()
    return db
