"""Table definitions (SQLAlchemy Core). Alembic migrations are the source of truth
for the schema; these mirror them for queries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
)

# --- event bus -----------------------------------------------------------------
# BigInteger on PostgreSQL, INTEGER (the rowid alias, so AUTOINCREMENT works) on SQLite.
Seq = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("tenant", String(128), nullable=False),
    Column("id", String(128), nullable=False),
    Column("source", String(512), nullable=False),
    Column("type", String(256), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("time", Float, nullable=False),
    Column("datacontenttype", String(128), nullable=False),
    Column("data", Text, nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("traceparent", String(128), nullable=False),
    Column("stored_at", Float, nullable=False),
    UniqueConstraint("tenant", "id", name="uq_events_tenant_id"),
    Index("ix_events_tenant_seq", "tenant", "seq"),
    Index("ix_events_stored_at", "stored_at"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("filter", Text, nullable=False),
    Column("cursor", Seq, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("visibility_timeout", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("tenant", "name", name="uq_subscriptions_tenant_name"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("subscription_id", String(32), primary_key=True),
    Column("seq", Seq, primary_key=True),
    Column("subject", String(512), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("visible_at", Float, nullable=False),
    Column("consumer", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_deliveries_visible", "subscription_id", "visible_at"),
    Index("ix_deliveries_subject", "subscription_id", "subject", "seq"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("subscription_id", String(32), primary_key=True),
    Column("seq", Seq, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("dead_at", Float, nullable=False),
)
