"""Tables computeflow owns, plus taskflow's own tables in the same metadata.

State that decides who may do what (the instance hold, host usage) is kept in
columns that a single conditional UPDATE can change, so that races between
conductors are settled by the database and not by Python.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from taskflow.persistence.backends.sqlalchemy import tables as taskflow_tables


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Microsecond timestamps everywhere: MariaDB's DATETIME drops fractions by default.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class Base(DeclarativeBase):
    pass


class Host(Base):
    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    driver: Mapped[str] = mapped_column(sa.String(32))
    uri: Mapped[str | None] = mapped_column(sa.String(255))
    vcpus: Mapped[int] = mapped_column(sa.Integer)
    ram_mb: Mapped[int] = mapped_column(sa.Integer)
    disk_gb: Mapped[int] = mapped_column(sa.Integer)
    # Running totals of claims; changed only by conditional UPDATEs (claims.py).
    used_vcpus: Mapped[int] = mapped_column(sa.Integer, default=0)
    used_ram_mb: Mapped[int] = mapped_column(sa.Integer, default=0)
    used_disk_gb: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Marked down by an operator: nothing is placed here; its instances may be evacuated.
    down: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class Flavor(Base):
    __tablename__ = "flavors"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    vcpus: Mapped[int] = mapped_column(sa.Integer)
    ram_mb: Mapped[int] = mapped_column(sa.Integer)
    root_gb: Mapped[int] = mapped_column(sa.Integer)
    ephemeral_gb: Mapped[int] = mapped_column(sa.Integer, default=0)
    swap_mb: Mapped[int] = mapped_column(sa.Integer, default=0)


class Image(Base):
    __tablename__ = "images"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    disk_format: Mapped[str] = mapped_column(sa.String(16), default="raw")
    size_mb: Mapped[int] = mapped_column(sa.Integer)
    path: Mapped[str | None] = mapped_column(sa.String(1024))
    checksum: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        # Names are unique among live instances; a deleted row keeps its name
        # for history, so uniqueness is checked on (name, deleted_marker).
        sa.UniqueConstraint("name", "live_marker", name="uq_instances_live_name"),
    )

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    # '' while the instance is live, its own uuid once deleted (frees the name).
    live_marker: Mapped[str] = mapped_column(sa.String(36), default="")
    host: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("hosts.name"))
    flavor: Mapped[str] = mapped_column(sa.String(64))
    image: Mapped[str] = mapped_column(sa.String(64))
    vm_state: Mapped[str] = mapped_column(sa.String(32))
    power_state: Mapped[str] = mapped_column(sa.String(32), default="nostate")
    task_state: Mapped[str | None] = mapped_column(sa.String(32))
    held_by: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    # Virtual interfaces as [{"id", "mac", "network"}], chosen at submission.
    vifs: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    # User metadata {key: value} (change_metadata); NULL reads as empty.
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=dict)
    # What computeflow remembers between operations (the rescue image); NULL reads as empty.
    system_metadata: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=dict)
    # Volume attachments as [{"volume_id", "mountpoint"}]; NULL reads as empty.
    volumes: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class Claim(Base):
    """Resources one operation holds on one host; the row is the idempotency key."""

    __tablename__ = "claims"

    operation_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("hosts.name"), primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36), index=True)
    vcpus: Mapped[int] = mapped_column(sa.Integer)
    ram_mb: Mapped[int] = mapped_column(sa.Integer)
    disk_gb: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class HostSlot(Base):
    """One operation's place on one host for one kind of limited work
    (persistence/host_slots.py): waiting in line while `slot` is NULL,
    holding slot number `slot` (0 .. limit-1) otherwise. The unique
    (host, category, slot) is what bounds the holders, across every
    conductor; NULLs never collide, so any number may wait."""

    __tablename__ = "host_slots"
    __table_args__ = (
        sa.UniqueConstraint("host", "category", "slot", name="uq_host_slots_slot"),
        sa.Index("ix_host_slots_line", "host", "category", "queued_at"),
    )

    operation_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    # No foreign key: a line must not stop a host from being removed.
    host: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    #: What is limited: "builds", "live_migrations", or an operation kind.
    category: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    slot: Mapped[int | None] = mapped_column(sa.Integer)
    #: The operation's submission time: the order of the line.
    queued_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    #: The latest attempt to take a slot: a place in line is kept while someone asks.
    asked_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    taken_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class Operation(Base):
    __tablename__ = "operations"
    # The history is read newest first by (created_at, id), in keyset pages
    # (persistence/history.py): each index it walks ends in those two columns.
    __table_args__ = (
        sa.Index("ix_operations_created_id", "created_at", "id"),
        sa.Index("ix_operations_state_created_id", "state", "created_at", "id"),
        sa.Index("ix_operations_instance_created", "instance_uuid", "created_at", "id"),
        sa.Index("ix_operations_kind_created", "kind", "created_at", "id"),
        sa.Index("ix_operations_error_created", "has_error", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    instance_uuid: Mapped[str | None] = mapped_column(sa.String(36))
    # Parameters with every secret replaced by a reference (see secrets.py).
    parameters: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(16))
    owner: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    #: Bumped by every take-over; flow-state writes are conditional on it (fencing).
    epoch: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    flow_version: Mapped[int] = mapped_column(sa.Integer)
    flow_detail_uuid: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)
    #: Generated by the database (`error IS NOT NULL`): the error-text search
    #: reads only these rows, through ix_operations_error_created.
    has_error: Mapped[bool | None] = mapped_column(sa.Boolean, sa.Computed("error IS NOT NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # Set by `computeflow cancel` / the API; the owner's lease keeper picks it up.
    cancel_requested_by: Mapped[str | None] = mapped_column(sa.String(255))
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


#: The flow log's step name for the flow itself (its own state changes, an
#: operator's action): a row that is not a step's move.
FLOW_STEP = "(flow)"


class FlowLogEntry(Base):
    """One step transition, written in the same transaction as taskflow's state."""

    __tablename__ = "flow_log"
    __table_args__ = (sa.Index("ix_flow_log_flow_seq", "flow_detail_uuid", "id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    flow_detail_uuid: Mapped[str] = mapped_column(sa.String(64))
    atom_uuid: Mapped[str] = mapped_column(sa.String(64))
    step: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(32))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    result: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    #: The writer's ownership epoch (None: written outside a conductor's run).
    epoch: Mapped[int | None] = mapped_column(sa.Integer)


class InstanceEvent(Base):
    """Something the hypervisor reported without being asked (a guest stopped)."""

    __tablename__ = "instance_events"
    __table_args__ = (sa.Index("ix_instance_events_instance", "instance_uuid", "id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36))
    host: Mapped[str] = mapped_column(sa.String(64))
    event: Mapped[str] = mapped_column(sa.String(32))
    power_state: Mapped[str] = mapped_column(sa.String(32))
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class Secret(Base):
    """An encrypted secret parameter; deleted when its operation ends."""

    __tablename__ = "secrets"

    ref: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    operation_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)


# taskflow's logbooks / flowdetails / atomdetails, defined by taskflow itself.
TASKFLOW_TABLES = taskflow_tables.fetch(Base.metadata)
