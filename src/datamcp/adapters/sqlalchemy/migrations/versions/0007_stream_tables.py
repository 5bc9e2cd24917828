"""Stream destination tables belong to a tenant: the one whose job first
wrote to the table. Existing jobs' tables go to the tenant of the oldest job
naming them.

Revision ID: 0007
Revises: 0006
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    owners = op.create_table(
        "stream_tables",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    jobs = op.get_bind().execute(
        sa.text("SELECT tenant, spec, created_at FROM stream_jobs ORDER BY created_at, id")
    )
    claimed: dict[str, dict[str, object]] = {}
    for tenant, spec, created_at in jobs:
        table = (json.loads(spec).get("sink") or {}).get("table") or ""
        if table and table not in claimed:
            claimed[table] = {"name": table, "tenant": tenant, "created_at": created_at}
    if claimed:
        op.bulk_insert(owners, list(claimed.values()))


def downgrade() -> None:
    op.drop_table("stream_tables")
