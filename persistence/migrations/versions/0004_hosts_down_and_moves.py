"""Hosts marked down (evacuate rebuilds their instances elsewhere).

What a resize needs between its phases (source host, old flavor, source
claims) lives in instances.system_metadata, so this is the only column.

Revision ID: 0004
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("down", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("down")
