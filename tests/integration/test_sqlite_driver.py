"""The one-trip SQLite driver path: same transaction, same errors, fixed-SQL IN lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select
from sqlalchemy.exc import IntegrityError, OperationalError

from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.sqlite_driver import (
    Prepared,
    SqliteDriver,
    in_json_list,
    json_list,
)

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
)
BY_IDS = Prepared(
    select(items.c.id, items.c.name.label("label"))
    .where(items.c.id.in_(in_json_list("ids")))
    .order_by(items.c.id)
    .limit(bindparam("limit"))
)
INSERT = "INSERT INTO items (id, name) VALUES (?, ?)"


@pytest.fixture
async def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_rows_are_named_and_in_lists_take_any_length(engine) -> None:  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        lite = SqliteDriver(conn)
        assert await lite.execute_many(INSERT, [(i, f"n{i}") for i in range(1, 2001)]) == 2000
        rows = await lite.rows(BY_IDS, {"ids": json_list(range(1500, 1505)), "limit": 3})
        assert [(r.id, r.label) for r in rows] == [
            (1500, "n1500"),
            (1501, "n1501"),
            (1502, "n1502"),
        ]
        wanted = list(range(1, 2001, 2))
        rows = await lite.rows(BY_IDS, {"ids": json_list(wanted), "limit": 5000})
        assert [r.id for r in rows] == wanted


async def test_driver_statements_share_the_unit_of_works_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        tx = await conn.begin()
        assert await SqliteDriver(conn).execute(INSERT, (7, "seven")) == 1
        await tx.rollback()
    async with engine.connect() as conn:
        assert (await conn.execute(select(items.c.id))).all() == []
    async with engine.connect() as conn:
        tx = await conn.begin()
        await SqliteDriver(conn).execute(INSERT, (8, "eight"))
        await tx.commit()
    async with engine.connect() as conn:
        assert (await conn.execute(select(items.c.id))).scalars().all() == [8]


async def test_driver_errors_are_sqlalchemys(engine) -> None:  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        lite = SqliteDriver(conn)
        await lite.execute(INSERT, (1, "one"))
        with pytest.raises(IntegrityError):
            await lite.execute(INSERT, (2, "one"))
        with pytest.raises(IntegrityError):
            await lite.execute_many(INSERT, [(3, "three"), (1, "again")])
        with pytest.raises(OperationalError):
            await lite.execute("SELECT * FROM no_such_table", ())


def test_a_missing_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="limit"):
        BY_IDS.parameters({"ids": "[]"})


def test_an_expanding_in_list_is_refused_at_preparation() -> None:
    with pytest.raises(ValueError, match="in_json_list"):
        Prepared(select(items.c.id).where(items.c.id.in_([1, 2])))
