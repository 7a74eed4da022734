"""PostgreSQL: a function that refuses a write batch of a superseded owner.

The backend sends a step's writes as one multi-statement round trip, which
PostgreSQL runs as one implicit transaction. Its first statement calls this
function: it share-locks the operation's row (a take-over waits for the
batch) and raises if the epoch moved on, which aborts the whole batch.
SQLSTATE CF001 tells the backend it was fenced, not failed.

SQLite and MariaDB check the epoch with a share-locked read inside an
ordinary transaction instead, so they need nothing here.

Revision ID: 0006
Revises: 0004
"""
from alembic import op

revision = "0006"
down_revision = "0004"

_CREATE = """
CREATE OR REPLACE FUNCTION computeflow_assert_epoch(op_id varchar, expected integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM operations WHERE id = op_id AND epoch = expected FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'operation %: ownership epoch % was superseded', op_id, expected
            USING ERRCODE = 'CF001';
    END IF;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS computeflow_assert_epoch(varchar, integer)")
