"""The database: models, migrations, queries and computeflow's taskflow backend.

This package imports none of computeflow's other packages.
"""
from persistence import options


def list_opts():
    """Options for oslo-config-generator."""
    return [("database", options.database_opts)]
