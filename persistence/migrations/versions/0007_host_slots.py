"""Per-host limits: the host_slots table (persistence/host_slots.py).

A row is one operation's place on one host for one kind of limited work:
waiting while `slot` is NULL, holding a numbered slot otherwise. The unique
(host, category, slot) bounds the holders across every conductor.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "host_slots",
        sa.Column("operation_id", sa.String(36), primary_key=True),
        sa.Column("host", sa.String(64), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("slot", sa.Integer),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("asked_at", TS, nullable=False),
        sa.Column("taken_at", TS),
        sa.UniqueConstraint("host", "category", "slot", name="uq_host_slots_slot"),
    )
    op.create_index("ix_host_slots_line", "host_slots", ["host", "category", "queued_at"])


def downgrade() -> None:
    op.drop_index("ix_host_slots_line", table_name="host_slots")
    op.drop_table("host_slots")
