"""Hot SQLite statements in one trip to the driver thread each.

aiosqlite runs every call on its own thread and the event loop waits for the
answer. Through SQLAlchemy's adapter a statement costs several such trips
(open a cursor, execute, fetch, close: four for a SELECT, three for an
INSERT); measured, one SELECT was ~285 us that way against ~60 us as one
``execute_fetchall``. On the event and task paths those trips, not SQL, were
most of the event loop's time per event.

So repositories prepare their hot statements here once: a SQLAlchemy Core
statement (the one source of the SQL) compiled for SQLite, with its
positional parameter order and the defaults of its anonymous parameters.
Executing one is a single aiosqlite call on the unit of work's own
connection, inside its transaction (the same ``sqlite3`` connection, so the
same implicit BEGIN and the same commit). Units of work never share a
connection concurrently (see ``uow.py``), so bypassing SQLAlchemy's per
connection mutex is safe. Driver errors are raised as SQLAlchemy's
``DBAPIError`` subclasses, as they would be through SQLAlchemy.

Only statements whose parameters need no type processing belong here
(numbers, text, JSON text); expanding ``IN`` lists are written as
``IN (SELECT value FROM json_each(:list))`` so the SQL stays fixed.
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, bindparam, column, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = sqlite.dialect()
_REQUIRED = object()


def in_json_list(name: str) -> Select[Any]:
    """``SELECT value FROM json_each(:name)``: the members of a JSON array
    parameter, for a fixed-SQL ``IN`` (pass the list through ``json_list``)."""
    return select(column("value")).select_from(func.json_each(bindparam(name)))


def json_list(values: Iterable[Any]) -> str:
    return json.dumps(list(values))


class Prepared:
    """A statement compiled once for the SQLite driver."""

    __slots__ = ("_params", "row", "sql")

    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql: str = compiled.string
        if "POSTCOMPILE" in self.sql:
            raise ValueError(
                "an expanding IN list cannot be prepared; use in_json_list(): " + self.sql
            )
        binds = compiled.binds
        self._params = tuple(
            (name, _REQUIRED if binds[name].required else binds[name].effective_value)
            for name in compiled.positiontup or ()
        )
        # A SELECT's columns, or a DML statement's RETURNING ones (none without).
        columns = list(statement.exported_columns.keys())
        self.row: Any = namedtuple("Row", columns) if columns else None

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, default in self._params:
            value = values.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"missing parameter {name!r} for {self.sql!r}")
            out.append(value)
        return tuple(out)


class SqliteDriver:
    """One-trip execution of prepared statements on one unit of work's connection."""

    __slots__ = ("_conn", "_raw")

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._raw: Any = None

    async def _driver(self) -> Any:
        if self._raw is None:
            self._raw = (await self._conn.get_raw_connection()).driver_connection
        return self._raw

    async def rows(self, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]:
        """All result rows, as named tuples of the statement's columns."""
        rows = await self._call("execute_fetchall", prepared.sql, prepared.parameters(values))
        make = prepared.row
        return [make._make(r) for r in rows] if make is not None else list(rows)

    async def run(self, prepared: Prepared, values: Mapping[str, Any]) -> int:
        """Execute a statement without results; returns the rows it changed."""
        return await self.execute(prepared.sql, prepared.parameters(values))

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Execute one statement without results; returns the rows it changed."""
        return int((await self._call("execute", sql, params)).rowcount)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """One statement over many parameter rows; returns the rows it changed."""
        return int((await self._call("executemany", sql, rows)).rowcount)

    async def _call(self, method: str, sql: str, params: Any) -> Any:
        """One aiosqlite call (one trip to its thread), errors as SQLAlchemy's."""
        raw = await self._driver()
        try:
            return await getattr(raw, method)(sql, params)
        except sqlite3.Error as exc:
            raise _translated(sql, params, exc) from exc


def _translated(sql: str, params: Any, exc: sqlite3.Error) -> DBAPIError:
    error = DBAPIError.instance(sql, params, exc, sqlite3.Error)
    assert isinstance(error, DBAPIError)
    return error
