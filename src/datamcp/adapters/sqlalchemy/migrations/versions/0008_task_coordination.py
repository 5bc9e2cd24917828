"""Tasks across replicas: a durable cancel request (any replica records it,
the owner acts on it), and the index the shared task pool is claimed by.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("cancel_requested_at", sa.Float, nullable=True))
    op.create_index(
        "ix_tasks_pool", "tasks", ["owner", "state", "capability", "priority", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_pool", "tasks")
    op.drop_column("tasks", "cancel_requested_at")
