"""The schema: one alembic history (ours, in its own version table) that also
creates taskflow's tables, with the parent_uuid indexes taskflow lacks."""

import sqlalchemy as sa

from persistence import schema
from persistence.session import Database


def test_schema_is_at_head_with_our_version_table(db_url):
    db = Database(db_url)
    insp = sa.inspect(db.engine)
    tables = set(insp.get_table_names())
    assert {
        "computeflow_alembic_version",
        "logbooks",
        "flowdetails",
        "atomdetails",
        "operations",
        "instances",
        "hosts",
        "claims",
        "flow_log",
        "secrets",
    } <= tables
    assert "alembic_version" not in tables  # left free for taskflow's own history
    assert schema.current_revision(db) == schema.head_revision()
    for table in ("flowdetails", "atomdetails"):
        indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
        assert ("parent_uuid",) in indexed
    # The history's keyset pages: every index it walks ends in (created_at, id).
    indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes("operations")}
    assert {
        ("created_at", "id"),
        ("state", "created_at", "id"),
        ("kind", "created_at", "id"),
        ("instance_uuid", "created_at", "id"),
        ("has_error", "created_at", "id"),
    } <= indexed
    db.dispose()


def test_upgrade_is_idempotent(db_url):
    db = Database(db_url)
    schema.upgrade(db)
    schema.upgrade(db)
    assert schema.current_revision(db) == schema.head_revision()
    db.dispose()


def test_server_database_is_not_upgraded_behind_the_operators_back(tmp_path):
    from persistence.errors import SchemaOutOfDate
    import pytest

    db = Database(f"sqlite:///{tmp_path}/old.sqlite")
    with pytest.raises(SchemaOutOfDate, match="computeflow db upgrade"):
        schema.ensure_current(db, auto_upgrade=False)
    schema.ensure_current(db, auto_upgrade=True)
    assert schema.current_revision(db) == schema.head_revision()


def test_the_head_revision_constant_is_alembics_head():
    """`ensure_current` compares with HEAD_REVISION to skip loading alembic;
    a new migration must bump it (or every command takes the slow path)."""
    assert schema.HEAD_REVISION == schema.head_revision()
