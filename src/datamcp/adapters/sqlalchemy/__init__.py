"""SQLAlchemy 2 async adapter: SQLite (aiosqlite, WAL) by default, PostgreSQL via asyncpg."""
