"""Table definitions (SQLAlchemy Core). Alembic migrations are the source of truth
for the schema; these mirror them for queries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
    true,
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

#: The agents each instance hosts for the others to see (remote agents).
instance_agents = Table(
    "instance_agents",
    metadata,
    Column("agent_id", String(200), primary_key=True),
    Column("instance_id", String(32), nullable=False, index=True),
    Column("descriptor", Text, nullable=False),
    Column("listed_at", Float, nullable=False),
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
    # False: deliveries are leased regardless of subject order (0005_streams).
    Column("ordered", Boolean, nullable=False, server_default=true()),
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
    Column("cancel_requested_at", Float, nullable=True),
    Index("ix_tasks_tenant_created", "tenant", "created_at", "id"),
    Index("ix_tasks_pool", "owner", "state", "capability", "priority", "created_at"),
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

# --- stream jobs -------------------------------------------------------------------

stream_jobs = Table(
    "stream_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("spec", Text, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("max_event_ms", BigInteger, nullable=True),
    Column("counters", Text, nullable=False),
    Column("checkpoint_at", Float, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("owner", String(32), nullable=False),
    Column("lease_until", Float, nullable=False),
    Index("ix_stream_jobs_tenant_created", "tenant", "created_at", "id"),
    Index("ix_stream_jobs_lease", "lease_until"),
    Index(
        "uq_stream_jobs_request",
        "tenant",
        "request_id",
        unique=True,
        sqlite_where=text("request_id != ''"),
        postgresql_where=text("request_id != ''"),
    ),
)

stream_windows = Table(
    "stream_windows",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("key", String(600), primary_key=True),
    Column("start_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
)

#: Which tenant a stream destination table belongs to (migration 0007).
stream_tables = Table(
    "stream_tables",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
)

# --- memory sync (the memory stores keep their own schema: memory_store.py) ---------

memory_sync_runs = Table(
    "memory_sync_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("status", Integer, nullable=False),
    Column("strategy", Integer, nullable=False),
    Column("mode", Integer, nullable=False),
    Column("stores", Text, nullable=False),
    Column("dry_run", Integer, nullable=False),
    Column("namespace_prefix", String(256), nullable=False),
    Column("trigger", String(256), nullable=False),
    Column("owner", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("counters", Text, nullable=False),
    Column("error", Text, nullable=False),
    Index("ix_memory_sync_runs_tenant_started", "tenant", "started_at", "id"),
    Index("ix_memory_sync_runs_status", "status"),
)

memory_conflicts = Table(
    "memory_conflicts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("namespace", String(256), nullable=False),
    Column("key", String(512), nullable=False),
    Column("status", Integer, nullable=False),
    Column("strategy", Integer, nullable=False),
    Column("sync_id", String(64), nullable=False),
    Column("versions", Text, nullable=False),
    Column("winner", String(128), nullable=False),
    Column("detected_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Index("ix_memory_conflicts_tenant_detected", "tenant", "detected_at", "id"),
    Index("ix_memory_conflicts_key", "tenant", "namespace", "key", "status"),
)

memory_schedules = Table(
    "memory_schedules",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("fired_for", Float, nullable=False),
    Column("fired_at", Float, nullable=False),
)

# --- pipelines (migration 0004) ------------------------------------------------------

pipelines = Table(
    "pipelines",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("spec", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("cursor", Text, nullable=True),
    Column("next_fire_at", Float, nullable=True),
    Column("has_triggers", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("tenant", "name", name="uq_pipelines_tenant_name"),
    Index("ix_pipelines_next_fire", "next_fire_at"),
)

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("pipeline_id", String(36), nullable=False),
    Column("pipeline_name", String(128), nullable=False),
    Column("pipeline_version", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("params", Text, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("stages", Text, nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("rows_written", BigInteger, nullable=False),
    Column("rows_rejected", BigInteger, nullable=False),
    Column("error_reason", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("cursor_start", Text, nullable=True),
    Column("cursor_end", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("owner", String(32), nullable=False),
    Column("cancel_requested", Integer, nullable=False),
    # The pipeline id while the run is unfinished, NULL after: the unique
    # constraint allows one unfinished run per pipeline across replicas.
    Column("active_key", String(36), nullable=True),
    UniqueConstraint("active_key", name="uq_pipeline_runs_active"),
    Index("ix_pipeline_runs_tenant_created", "tenant", "created_at", "id"),
    Index("ix_pipeline_runs_pipeline_created", "pipeline_id", "created_at", "id"),
    Index("ix_pipeline_runs_state_owner", "state", "owner"),
)

pipeline_rejects = Table(
    "pipeline_rejects",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("stage", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("row", Text, nullable=False),
    Column("row_number", BigInteger, nullable=False),
    Index("ix_pipeline_rejects_run", "run_id", "seq"),
)
