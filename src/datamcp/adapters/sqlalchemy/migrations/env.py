"""Alembic environment: always runs on a connection handed in by migrate.py."""

from alembic import context

from datamcp.adapters.sqlalchemy.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded by migrate.py
    raise RuntimeError("run migrations through `datamcp db upgrade`, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
