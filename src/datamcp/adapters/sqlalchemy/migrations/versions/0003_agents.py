"""Agents: tasks and the audit records of agent-to-agent calls.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("capability", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("timeout", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("parent_task_id", sa.String(36), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("pinned", sa.Integer, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("progress_message", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error_reason", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("error_retryable", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("owner", sa.String(32), nullable=False),
    )
    op.create_index("ix_tasks_tenant_created", "tasks", ["tenant", "created_at", "id"])
    op.create_index("ix_tasks_state_owner", "tasks", ["state", "owner"])
    op.create_index("ix_tasks_tenant_correlation", "tasks", ["tenant", "correlation_id"])
    op.create_table(
        "audit_records",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("source_agent_id", sa.String(256), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("target_agent_id", sa.String(256), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("parent_task_id", sa.String(36), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
    )
    op.create_index("ix_audit_tenant_started", "audit_records", ["tenant", "started_at", "id"])
    op.create_index("ix_audit_tenant_correlation", "audit_records", ["tenant", "correlation_id"])


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_table("tasks")
