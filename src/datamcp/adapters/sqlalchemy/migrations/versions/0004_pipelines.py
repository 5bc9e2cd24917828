"""Pipelines: pipeline definitions, runs, rejects, cursors, schedules.

The incremental cursor and the next schedule slot live on the pipeline row
(``cursor``, ``next_fire_at``); a replica fires a slot by moving
``next_fire_at`` with a conditional UPDATE.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("cursor", sa.Text, nullable=True),
        sa.Column("next_fire_at", sa.Float, nullable=True),
        sa.Column("has_triggers", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_pipelines_tenant_name"),
    )
    op.create_index("ix_pipelines_next_fire", "pipelines", ["next_fire_at"])
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("pipeline_id", sa.String(36), nullable=False),
        sa.Column("pipeline_name", sa.String(128), nullable=False),
        sa.Column("pipeline_version", sa.Integer, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("stages", sa.Text, nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_written", sa.BigInteger, nullable=False),
        sa.Column("rows_rejected", sa.BigInteger, nullable=False),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("cursor_start", sa.Text, nullable=True),
        sa.Column("cursor_end", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("cancel_requested", sa.Integer, nullable=False),
        sa.Column("active_key", sa.String(36), nullable=True),
        sa.UniqueConstraint("active_key", name="uq_pipeline_runs_active"),
    )
    op.create_index(
        "ix_pipeline_runs_tenant_created", "pipeline_runs", ["tenant", "created_at", "id"]
    )
    op.create_index(
        "ix_pipeline_runs_pipeline_created", "pipeline_runs", ["pipeline_id", "created_at", "id"]
    )
    op.create_index("ix_pipeline_runs_state_owner", "pipeline_runs", ["state", "owner"])
    op.create_table(
        "pipeline_rejects",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("row_number", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_pipeline_rejects_run", "pipeline_rejects", ["run_id", "seq"])


def downgrade() -> None:
    op.drop_table("pipeline_rejects")
    op.drop_table("pipeline_runs")
    op.drop_table("pipelines")
