"""Stream jobs: definitions and checkpointed window state; subscriptions
that may opt out of per-subject ordering (a stream job orders by event time).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing subscriptions keep per-subject ordering (the default).
    op.add_column(
        "subscriptions",
        sa.Column("ordered", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "stream_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("max_event_ms", sa.BigInteger, nullable=True),
        sa.Column("counters", sa.Text, nullable=False),
        sa.Column("checkpoint_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )
    op.create_index("ix_stream_jobs_tenant_created", "stream_jobs", ["tenant", "created_at", "id"])
    op.create_index("ix_stream_jobs_lease", "stream_jobs", ["lease_until"])
    op.create_index(
        "uq_stream_jobs_request",
        "stream_jobs",
        ["tenant", "request_id"],
        unique=True,
        sqlite_where=sa.text("request_id != ''"),
        postgresql_where=sa.text("request_id != ''"),
    )
    op.create_table(
        "stream_windows",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("start_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("end_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stream_windows")
    op.drop_table("stream_jobs")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("ordered")
