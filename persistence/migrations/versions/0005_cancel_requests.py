"""Cancel requests: who asked to cancel an operation, and when.

A conductor running the operation reads these columns in the transaction that
renews its lease and stops the flow at the next step boundary.

Revision ID: 0005
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0003"

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("cancel_requested_by", sa.String(255)))
        batch.add_column(sa.Column("cancel_requested_at", TS))


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("cancel_requested_by")
