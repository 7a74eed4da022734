"""Schema upgrades through alembic, driven from code (`computeflow db upgrade`).

Our version table is `computeflow_alembic_version` so that it never clashes
with taskflow's own alembic history (which uses the default name); taskflow's
tables are created by our migrations instead of taskflow's.

Every command checks the schema first (`ensure_current`). That check reads the
version row with one query and compares it with `HEAD_REVISION`; alembic
(~0.15 s to import, more to read the migration scripts) is loaded only to
upgrade, or when the row names another revision. A stale `HEAD_REVISION` only
costs the slow path (tests/persistence/test_schema.py keeps it current).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import sqlalchemy as sa

from persistence.errors import SchemaOutOfDate
from persistence.session import Database

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "computeflow_alembic_version"
#: The newest migration in persistence/migrations/versions.
HEAD_REVISION = "0008"
_HERE = os.path.join(os.path.dirname(__file__), "migrations")


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _HERE)
    return cfg


def head_revision() -> str:
    """The newest revision, as alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no schema migrations found in {_HERE}")
    return head


def current_revision(db: Database) -> str | None:
    """The database's revision; None before the first upgrade. Read with a
    plain query: alembic keeps one row (one head) in its version table."""
    with db.engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def upgrade(db: Database, revision: str = "head") -> None:
    from alembic import command

    cfg = _config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_current(db: Database, *, auto_upgrade: bool) -> None:
    """Upgrade (embedded mode) or refuse to run on an old schema (shared DBs)."""
    current = current_revision(db)
    if current == HEAD_REVISION:
        return
    head = head_revision()
    if current == head:
        return
    if auto_upgrade:
        upgrade(db)
    else:
        raise SchemaOutOfDate(current, head)
