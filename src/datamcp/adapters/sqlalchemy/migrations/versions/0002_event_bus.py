"""Event bus: durable event store, subscriptions, deliveries, dead letters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("type", sa.String(256), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("datacontenttype", sa.String(128), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("traceparent", sa.String(128), nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "id", name="uq_events_tenant_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_tenant_seq", "events", ["tenant", "seq"])
    op.create_index("ix_events_stored_at", "events", ["stored_at"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("filter", sa.Text, nullable=False),
        sa.Column("cursor", Seq, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("visibility_timeout", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_subscriptions_tenant_name"),
    )
    op.create_table(
        "deliveries",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("seq", Seq, primary_key=True),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("visible_at", sa.Float, nullable=False),
        sa.Column("consumer", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_deliveries_visible", "deliveries", ["subscription_id", "visible_at"])
    op.create_index("ix_deliveries_subject", "deliveries", ["subscription_id", "subject", "seq"])
    op.create_table(
        "dead_letters",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("seq", Seq, primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("dead_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("deliveries")
    op.drop_table("subscriptions")
    op.drop_table("events")
