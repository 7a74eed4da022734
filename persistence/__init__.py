"""The database: models, migrations, queries and computeflow's taskflow backend.

This package imports none of computeflow's other packages.
"""

from oslo_config import cfg

from persistence import options


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for oslo-config-generator."""
    return [("database", options.database_opts)]
