"""Shared fixtures: a database URL for each backend (SQLite file, and PostgreSQL
when ``DATAMCP_TEST_PG_DSN`` is set) and settings pointing at it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

PG_DSN = os.environ.get("DATAMCP_TEST_PG_DSN")


def pg_dsn_or_skip() -> str:
    if not PG_DSN:
        pytest.skip("DATAMCP_TEST_PG_DSN is not set")
    return PG_DSN


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database; dropped afterwards."""
    dsn = make_url(pg_dsn_or_skip()).set(drivername="postgresql")
    name = f"datamcp_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = dsn.render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield dsn.set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of each backend the integration tests must pass on."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'datamcp.db'}"
    return str(request.getfixturevalue("pg_database"))


def _dump_asyncio_tasks() -> None:
    """Print the stack of every pending asyncio task (pytest-timeout prints
    only threads, and a hung async test is a task waiting, not a thread)."""
    print("\n+++ pending asyncio tasks before the test timeout +++", file=sys.stderr)
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and not obj.done():
            print(f"--- {obj.get_name()}", file=sys.stderr)
            obj.print_stack(limit=15, file=sys.stderr)


@pytest.fixture(autouse=True)
def _task_dump_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    timeout = float(request.config.getini("timeout") or 0)
    timer = threading.Timer(max(timeout - 5, 1), _dump_asyncio_tasks) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
