"""The operations history read in keyset pages (web API and pages, `ops list`).

Pages are ordered newest first by (created_at, id), id breaking ties, and
each page starts where the previous one ended (`WHERE (created_at, id) <
(last row's)`), so every index the history walks ends in (created_at, id):
the whole history, one state's, one kind's, one instance's.

`has_error` (generated: `error IS NOT NULL`) and its index let the error-text
search read only the operations that have an error, newest first, instead of
every operation: MariaDB has no partial index, and without this it walked the
whole history one row at a time (100,000 operations: 125 ms, now 10 ms). On
PostgreSQL the column is STORED (adding it rewrites the table once); on
SQLite and MariaDB it is VIRTUAL, the index holds its values.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # PostgreSQL indexes only STORED generated columns; SQLite cannot add one
    # to a table (ALTER TABLE ADD COLUMN takes VIRTUAL only): each its own.
    stored = True if op.get_bind().dialect.name == "postgresql" else None
    op.add_column("operations", sa.Column("has_error", sa.Boolean,
                                          sa.Computed("error IS NOT NULL", persisted=stored)))
    op.create_index("ix_operations_created_id", "operations", ["created_at", "id"])
    op.create_index("ix_operations_state_created_id", "operations", ["state", "created_at", "id"])
    op.create_index("ix_operations_instance_created", "operations",
                    ["instance_uuid", "created_at", "id"])
    op.create_index("ix_operations_kind_created", "operations", ["kind", "created_at", "id"])
    op.create_index("ix_operations_error_created", "operations", ["has_error", "created_at", "id"])
    op.drop_index("ix_operations_created", table_name="operations")
    op.drop_index("ix_operations_state_created", table_name="operations")
    op.drop_index("ix_operations_instance_uuid", table_name="operations")


def downgrade() -> None:
    op.create_index("ix_operations_instance_uuid", "operations", ["instance_uuid"])
    op.create_index("ix_operations_state_created", "operations", ["state", "created_at"])
    op.create_index("ix_operations_created", "operations", ["created_at"])
    for name in ("ix_operations_error_created", "ix_operations_kind_created",
                 "ix_operations_instance_created",
                 "ix_operations_state_created_id", "ix_operations_created_id"):
        op.drop_index(name, table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("has_error")
