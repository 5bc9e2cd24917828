"""Memory sync: sync runs, conflicts, schedule marks (the memory stores keep
their own schema, created when a store opens).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memory_sync_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("strategy", sa.Integer, nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("stores", sa.Text, nullable=False),
        sa.Column("dry_run", sa.Integer, nullable=False),
        sa.Column("namespace_prefix", sa.String(256), nullable=False),
        sa.Column("trigger", sa.String(256), nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("counters", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_memory_sync_runs_tenant_started", "memory_sync_runs", ["tenant", "started_at", "id"]
    )
    op.create_index("ix_memory_sync_runs_status", "memory_sync_runs", ["status"])
    op.create_table(
        "memory_conflicts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("namespace", sa.String(256), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("strategy", sa.Integer, nullable=False),
        sa.Column("sync_id", sa.String(64), nullable=False),
        sa.Column("versions", sa.Text, nullable=False),
        sa.Column("winner", sa.String(128), nullable=False),
        sa.Column("detected_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_memory_conflicts_tenant_detected", "memory_conflicts", ["tenant", "detected_at", "id"]
    )
    op.create_index(
        "ix_memory_conflicts_key", "memory_conflicts", ["tenant", "namespace", "key", "status"]
    )
    op.create_table(
        "memory_schedules",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("fired_for", sa.Float, nullable=False),
        sa.Column("fired_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("memory_schedules")
    op.drop_table("memory_conflicts")
    op.drop_table("memory_sync_runs")
