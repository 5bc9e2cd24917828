"""The executor: one statement for both dialects; on SQLite the one-trip
driver path (same transaction, same errors); IN lists written and passed
one way."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.executor import (
    CoreExecutor,
    Prepared,
    SqliteExecutor,
    executor_for,
    in_list,
    insert_ignoring,
    not_in_list,
)

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
)
BY_IDS = (
    select(items.c.id, items.c.name.label("label"))
    .where(in_list(items.c.id, "ids"))
    .order_by(items.c.id)
    .limit(bindparam("limit"))
)
BY_NAMES = select(items.c.id).where(in_list(items.c.name, "names")).order_by(items.c.id)
NOT_BY_IDS = select(items.c.id).where(not_in_list(items.c.id, "ids")).order_by(items.c.id)
DELETE_BY_IDS = delete(items).where(in_list(items.c.id, "ids"))
INSERT = insert(items).values(id=bindparam("id"), name=bindparam("name"))
INSERT_IGNORING = insert_ignoring(items).values(id=bindparam("id"), name=bindparam("name"))

PG_DSN = os.environ.get("DATAMCP_TEST_PG_DSN", "")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def pg_engine() -> AsyncIterator[AsyncEngine]:
    """A fresh PostgreSQL database (skipped without ``DATAMCP_TEST_PG_DSN``)."""
    if not PG_DSN:
        pytest.skip("DATAMCP_TEST_PG_DSN is not set")
    admin = create_engine(PG_DSN).execution_options(isolation_level="AUTOCOMMIT")
    name = f"datamcp_exec_{uuid.uuid4().hex[:12]}"
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_DSN.rpartition("/")
    engine = create_engine(f"{base}/{name}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield engine
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.dispose()


def _sql(statement: Any, dialect: Any) -> str:
    return " ".join(str(statement.compile(dialect=dialect)).split())


def test_an_in_list_compiles_to_fixed_sql_on_each_dialect() -> None:
    assert _sql(BY_NAMES, sqlite.dialect()).endswith(
        "WHERE items.name IN (SELECT value FROM json_each(?)) ORDER BY items.id"
    )
    assert "WHERE items.id NOT IN (SELECT value FROM json_each(?))" in _sql(
        NOT_BY_IDS, sqlite.dialect()
    )
    pg = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    assert "WHERE items.name = ANY ($1::VARCHAR(32)[])" in _sql(BY_NAMES, pg)
    assert "WHERE items.id <> ALL ($1::INTEGER[])" in _sql(NOT_BY_IDS, pg)
    # Never an expanding IN: the same SQL for any length.
    assert "POSTCOMPILE" not in _sql(BY_NAMES, postgresql.dialect())


def test_insert_ignoring_compiles_on_both_dialects() -> None:
    assert _sql(INSERT_IGNORING, sqlite.dialect()).endswith("VALUES (?, ?) ON CONFLICT DO NOTHING")
    assert _sql(INSERT_IGNORING, postgresql.dialect()).endswith("ON CONFLICT DO NOTHING")


async def _in_lists(engine: AsyncEngine, expected: type) -> None:
    """Empty, one and many members, through the executor and through
    SQLAlchemy, as a list or a tuple."""
    async with engine.begin() as conn:
        x = executor_for(conn)
        assert type(x) is expected
        assert await x.many(INSERT, [{"id": i, "name": f"n{i}"} for i in range(1, 2001)]) in (
            2000,
            -1,  # asyncpg does not count an executemany
        )
        for values, found in (([], []), ([7], [7]), (range(1500, 1505), [1500, 1501, 1502])):
            rows = await x.rows(BY_IDS, {"ids": list(values), "limit": 3})
            assert [r.id for r in rows] == found
            assert [(r.id, r.label) for r in rows] == [(i, f"n{i}") for i in found]
            through = await conn.execute(BY_IDS, {"ids": tuple(values), "limit": 3})
            assert [r.id for r in through] == found
        wanted = list(range(1, 2001, 2))
        rows = await x.rows(BY_IDS, {"ids": tuple(wanted), "limit": 5000})
        assert [r.id for r in rows] == wanted
        assert [r.id for r in await x.rows(BY_NAMES, {"names": ("n3", "n1", "x")})] == [1, 3]
        assert [r.id for r in await x.rows(BY_NAMES, {"names": []})] == []
        kept = await x.rows(NOT_BY_IDS, {"ids": list(range(2, 2001))})
        assert [r.id for r in kept] == [1]
        assert len(await x.rows(NOT_BY_IDS, {"ids": []})) == 2000
        assert await x.run(DELETE_BY_IDS, {"ids": []}) == 0
        assert await x.run(DELETE_BY_IDS, {"ids": [5]}) == 1
        assert await x.run(DELETE_BY_IDS, {"ids": [5, 6, 7, 99999]}) == 2
        assert await x.many(INSERT, []) == 0


async def test_in_lists_on_sqlite(engine: AsyncEngine) -> None:
    await _in_lists(engine, SqliteExecutor)


@pytest.mark.pg
async def test_in_lists_on_postgresql(pg_engine: AsyncEngine) -> None:
    await _in_lists(pg_engine, CoreExecutor)


async def test_statements_share_the_unit_of_works_transaction(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        tx = await conn.begin()
        assert await SqliteExecutor(conn).run(INSERT, {"id": 7, "name": "seven"}) == 1
        await tx.rollback()
    async with engine.connect() as conn:
        assert (await conn.execute(select(items.c.id))).all() == []
    async with engine.connect() as conn:
        tx = await conn.begin()
        await SqliteExecutor(conn).run(INSERT, {"id": 8, "name": "eight"})
        await tx.commit()
    async with engine.connect() as conn:
        assert (await conn.execute(select(items.c.id))).scalars().all() == [8]


async def test_driver_errors_are_sqlalchemys(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        x = SqliteExecutor(conn)
        await x.run(INSERT, {"id": 1, "name": "one"})
        with pytest.raises(IntegrityError):
            await x.run(INSERT, {"id": 2, "name": "one"})
        with pytest.raises(IntegrityError):
            await x.many(INSERT, [{"id": 3, "name": "three"}, {"id": 1, "name": "again"}])
        assert await x.run(INSERT_IGNORING, {"id": 1, "name": "again"}) == 0
        other = Table("no_such_table", MetaData(), Column("id", Integer))
        with pytest.raises(OperationalError):
            await x.rows(select(other.c.id))


def test_a_missing_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="limit"):
        Prepared(BY_IDS).parameters({"ids": []})
    with pytest.raises(KeyError, match="name"):
        Prepared(INSERT).many_parameters([{"id": 1, "name": "a"}, {"id": 2}])


def test_anonymous_parameters_keep_their_values() -> None:
    prepared = Prepared(select(items.c.id).where(items.c.id > 5, items.c.name == bindparam("n")))
    assert prepared.parameters({"n": "x"}) == (5, "x")


def test_an_expanding_in_list_is_refused_at_preparation() -> None:
    with pytest.raises(ValueError, match="in_list"):
        Prepared(select(items.c.id).where(items.c.id.in_([1, 2])))
