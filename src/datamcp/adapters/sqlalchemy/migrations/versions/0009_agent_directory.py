"""Agents hosted by each instance (remote agents connected to it), so every
replica can accept tasks for them and list them.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_agents",
        sa.Column("agent_id", sa.String(200), primary_key=True),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("descriptor", sa.Text, nullable=False),
        sa.Column("listed_at", sa.Float, nullable=False),
    )
    op.create_index("ix_instance_agents_instance_id", "instance_agents", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_instance_agents_instance_id", "instance_agents")
    op.drop_table("instance_agents")
