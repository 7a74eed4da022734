"""Options of the persistence layer ([database])."""

from oslo_config import cfg

database_opts = [
    cfg.StrOpt(
        "connection",
        default="sqlite:///$state_path/computeflow.sqlite",
        secret=True,
        help="SQLAlchemy URL of the database that holds instances, operations, "
        "flow logs and taskflow's own tables. The default is a SQLite file under "
        "state_path (the embedded mode). For production use PostgreSQL "
        "(postgresql+psycopg2://...) or MariaDB/MySQL (mysql+pymysql://...).",
    ),
    cfg.IntOpt(
        "pool_size",
        default=10,
        min=1,
        help="Connections kept open per process (server databases only).",
    ),
    cfg.IntOpt(
        "connect_timeout",
        default=5,
        min=1,
        help="Seconds to wait for the database server when connecting; an "
        "unreachable server fails fast with a clear error.",
    ),
    cfg.StrOpt(
        "secret_key_file",
        default="$state_path/secret.key",
        help="Key that encrypts secret operation parameters (admin passwords, "
        "injected file contents) at rest. Created with mode 0600 on first use. "
        "Every conductor sharing a database must use the same key.",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(database_opts, group="database")
