"""Operation catalogue: instance metadata (user and system), volume attachments,
and hypervisor lifecycle events.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    # Nullable without a server default: MySQL refuses literal defaults on JSON
    # columns; the code reads NULL as empty.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("user_metadata", sa.JSON))
        batch.add_column(sa.Column("system_metadata", sa.JSON))
        batch.add_column(sa.Column("volumes", sa.JSON))
    op.create_table(
        "instance_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("power_state", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_instance_events_instance", "instance_events", ["instance_uuid", "id"])
