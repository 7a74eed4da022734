"""Initial schema: hosts, flavors, images, instances, claims, operations, flow log,
secrets, and taskflow's logbooks/flowdetails/atomdetails (with the parent_uuid
indexes taskflow itself lacks).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql
from taskflow.persistence.backends.sqlalchemy import tables as taskflow_tables

revision = "0001"
down_revision = None

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

FLAVORS = [
    # name, vcpus, ram_mb, root_gb, ephemeral_gb, swap_mb
    ("m1.tiny", 1, 512, 1, 0, 0),
    ("m1.small", 1, 2048, 10, 5, 512),
    ("m1.medium", 2, 4096, 20, 10, 1024),
    ("m1.large", 4, 8192, 40, 20, 2048),
]
IMAGES = [("cirros", "raw", 16), ("debian-12", "qcow2", 2048)]


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("driver", sa.String(32), nullable=False),
        sa.Column("uri", sa.String(255)),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ram_mb", sa.Integer, nullable=False),
        sa.Column("disk_gb", sa.Integer, nullable=False),
        sa.Column("used_vcpus", sa.Integer, nullable=False),
        sa.Column("used_ram_mb", sa.Integer, nullable=False),
        sa.Column("used_disk_gb", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    flavors = op.create_table(
        "flavors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ram_mb", sa.Integer, nullable=False),
        sa.Column("root_gb", sa.Integer, nullable=False),
        sa.Column("ephemeral_gb", sa.Integer, nullable=False),
        sa.Column("swap_mb", sa.Integer, nullable=False),
    )
    images = op.create_table(
        "images",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("disk_format", sa.String(16), nullable=False),
        sa.Column("size_mb", sa.Integer, nullable=False),
        sa.Column("path", sa.String(1024)),
        sa.Column("checksum", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("live_marker", sa.String(36), nullable=False),
        sa.Column("host", sa.String(64), sa.ForeignKey("hosts.name")),
        sa.Column("flavor", sa.String(64), nullable=False),
        sa.Column("image", sa.String(64), nullable=False),
        sa.Column("vm_state", sa.String(32), nullable=False),
        sa.Column("power_state", sa.String(32), nullable=False),
        sa.Column("task_state", sa.String(32)),
        sa.Column("held_by", sa.String(36)),
        sa.Column("vifs", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("name", "live_marker", name="uq_instances_live_name"),
    )
    op.create_index("ix_instances_held_by", "instances", ["held_by"])
    op.create_table(
        "claims",
        sa.Column("operation_id", sa.String(36), primary_key=True),
        sa.Column("host", sa.String(64), sa.ForeignKey("hosts.name"), primary_key=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ram_mb", sa.Integer, nullable=False),
        sa.Column("disk_gb", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_claims_instance_uuid", "claims", ["instance_uuid"])
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("instance_uuid", sa.String(36)),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("lease_expires_at", TS),
        sa.Column("flow_version", sa.Integer, nullable=False),
        sa.Column("flow_detail_uuid", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_index("ix_operations_instance_uuid", "operations", ["instance_uuid"])
    op.create_index("ix_operations_state_created", "operations", ["state", "created_at"])
    op.create_index("ix_operations_created", "operations", ["created_at"])
    op.create_table(
        "flow_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flow_detail_uuid", sa.String(64), nullable=False),
        sa.Column("atom_uuid", sa.String(64), nullable=False),
        sa.Column("step", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
    )
    op.create_index("ix_flow_log_flow_seq", "flow_log", ["flow_detail_uuid", "id"])
    op.create_table(
        "secrets",
        sa.Column("ref", sa.String(36), primary_key=True),
        sa.Column("operation_id", sa.String(36), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_secrets_operation_id", "secrets", ["operation_id"])

    # taskflow's schema as defined by the pinned taskflow release.
    tf = taskflow_tables.fetch(sa.MetaData())
    bind = op.get_bind()
    for table in (tf.logbooks, tf.flowdetails, tf.atomdetails):
        table.create(bind)
    op.create_index("ix_flowdetails_parent_uuid", "flowdetails", ["parent_uuid"])
    op.create_index("ix_atomdetails_parent_uuid", "atomdetails", ["parent_uuid"])

    op.bulk_insert(
        flavors,
        [dict(zip(("name", "vcpus", "ram_mb", "root_gb", "ephemeral_gb", "swap_mb"), f))
         for f in FLAVORS],
    )
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    op.bulk_insert(
        images,
        [{"name": n, "disk_format": f, "size_mb": s, "path": None, "checksum": None,
          "created_at": now} for n, f, s in IMAGES],
    )
