"""Fencing: a claim epoch on every operation, and on every flow-log row the
epoch of the conductor that wrote it.

Taking ownership bumps `operations.epoch`; every flow-state write is
conditional on the epoch its writer took, so a conductor that lost its claim
(paused, partitioned) cannot persist anything after another took over.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("flow_log") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("flow_log") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("epoch")
