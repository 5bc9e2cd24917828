"""Engine construction: the one place that knows SQLite from PostgreSQL.

An async engine is bound to the event loop that first uses it, so engines
are built inside bootstrap, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5000


def normalise_url(url: str) -> URL:
    """Pick the async driver for plain ``sqlite:`` / ``postgresql:`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in {"postgresql", "postgres", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def create_engine(url: str, *, connect_timeout: float = 5.0) -> AsyncEngine:
    """Build the engine; for SQLite also create the parent directory."""
    parsed = normalise_url(url)
    if is_sqlite(parsed):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # Every unit of work ends its transaction itself (commit or
            # rollback), so the pool's extra rollback on return is a wasted
            # round trip to the driver thread on every transaction.
            pool_reset_on_return=None,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=connect_timeout,
        connect_args={"timeout": connect_timeout, "command_timeout": 30},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run while one writer commits; NORMAL sync is durable
    # across process crashes in WAL mode (only an OS crash can lose the tail).
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL waits for another
    # process's lock too.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
