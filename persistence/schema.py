"""Schema upgrades through alembic, driven from code (`computeflow db upgrade`).

Our version table is `computeflow_alembic_version` so that it never clashes
with taskflow's own alembic history (which uses the default name); taskflow's
tables are created by our migrations instead of taskflow's.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from persistence.errors import SchemaOutOfDate
from persistence.session import Database

VERSION_TABLE = "computeflow_alembic_version"
_HERE = os.path.join(os.path.dirname(__file__), "migrations")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", _HERE)
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no schema migrations found in {_HERE}")
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = _config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_current(db: Database, *, auto_upgrade: bool) -> None:
    """Upgrade (embedded mode) or refuse to run on an old schema (shared DBs)."""
    current, head = current_revision(db), head_revision()
    if current == head:
        return
    if auto_upgrade:
        upgrade(db)
    else:
        raise SchemaOutOfDate(current, head)
