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

# --- agents ----------------------------------------------------------------------

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("capability", String(256), nullable=False),
    Column("agent_id", String(256), nullable=False),
    Column("input", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("timeout", Float, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("state", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("parent_task_id", String(36), nullable=False),
    Column("depth", Integer, nullable=False),
    Column("pinned", Integer, nullable=False),
    Column("progress", Float, nullable=False),
    Column("progress_message", Text, nullable=False),
    Column("result", Text, nullable=True),
    Column("error_reason", String(128), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_retryable", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("owner", String(32), nullable=False),
    Index("ix_tasks_tenant_created", "tenant", "created_at", "id"),
    Index("ix_tasks_state_owner", "state", "owner"),
    Index("ix_tasks_tenant_correlation", "tenant", "correlation_id"),
)

audit_records = Table(
    "audit_records",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("source_agent_id", String(256), nullable=False),
    Column("target", String(256), nullable=False),
    Column("target_agent_id", String(256), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("parent_task_id", String(36), nullable=False),
    Column("depth", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("error", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration", Float, nullable=False),
    Index("ix_audit_tenant_started", "tenant", "started_at", "id"),
    Index("ix_audit_tenant_correlation", "tenant", "correlation_id"),
)
