"""One way to execute a repository's statements, chosen once per connection.

Repositories write each hot statement once, as a module-level SQLAlchemy
Core statement, and run it through an ``Executor``:

- ``rows(statement, params)``: the result rows (attribute access by column);
- ``run(statement, params)``: the number of rows changed;
- ``many(statement, [params, ...])``: one statement over many parameter sets
  (the rows changed, or -1 where the driver does not count them: asyncpg).

``executor_for(conn)`` picks the implementation from the dialect, once per
unit of work:

- SQLite (``SqliteExecutor``): one trip to the driver thread per statement.
  aiosqlite runs every call on its own thread and the event loop waits for
  the answer. Through SQLAlchemy's adapter a statement costs several such
  trips (open a cursor, execute, fetch, close: four for a SELECT, three for
  an INSERT); measured, one SELECT was ~285 us that way against ~60 us as one
  ``execute_fetchall``. On the event and task paths those trips, not SQL,
  were most of the event loop's time per event. So each statement is
  compiled for SQLite once (cached by statement), with its positional
  parameter order and the defaults of its anonymous parameters, and runs as
  a single aiosqlite call on the unit of work's own connection, inside its
  transaction (the same ``sqlite3`` connection, so the same implicit BEGIN
  and the same commit). Units of work never share a connection concurrently
  (see ``uow.py``), so bypassing SQLAlchemy's per connection mutex is safe.
  Driver errors are raised as SQLAlchemy's ``DBAPIError`` subclasses, as
  they would be through SQLAlchemy.
- Anything else, i.e. PostgreSQL (``CoreExecutor``): ``AsyncConnection.execute``.

Rules for executor statements:

- Build them once (module level): the SQLite executor caches its compiled
  form by statement, and SQLAlchemy's own cache key is memoized on a reused
  statement (a statement built per call costs its construction and its
  cache-key walk every time: ~85 us of a ~185 us SQLite statement,
  measured).
- Their parameters need no type processing (numbers, text, JSON text): the
  SQLite executor hands values to the driver as they are.
- An ``IN`` list is written one way, ``in_list(column, "name")`` (or
  ``not_in_list``), and passed one way, as a Python list or tuple. It
  compiles to ``column IN (SELECT value FROM json_each(?))`` on SQLite (the
  SQLite executor JSON-encodes the list) and ``column = ANY($n)`` on
  PostgreSQL, so the SQL stays fixed whatever the length: no expanding
  ``IN``, which the SQLite executor refuses.

Statements built per call (dynamic filters, paging) go through
``AsyncConnection.execute`` as before: they get SQLAlchemy's type processing
and compiled cache, and are off the hot paths.
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from sqlalchemy import Boolean, String
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.type_api import TypeDecorator, TypeEngine
from sqlalchemy.sql.visitors import InternalTraversal

_DIALECT = sqlite.dialect()
_NO_PARAMS: Mapping[str, Any] = {}


# --- IN lists ------------------------------------------------------------------------


def json_list(values: Iterable[Any]) -> str:
    return json.dumps(list(values))


class _Members(TypeDecorator[Any]):
    """The type of an ``in_list`` parameter: a JSON array on SQLite, an array
    of the column's type on PostgreSQL."""

    impl = String
    cache_ok = True

    def __init__(self, item: TypeEngine[Any]) -> None:
        super().__init__()
        self.item = item

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(ARRAY(self.item))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return json_list(value) if dialect.name == "sqlite" else list(value)


class InList(ColumnElement[bool]):
    """``column [NOT] IN`` the members of one list parameter (see ``in_list``)."""

    __visit_name__ = "in_list"
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("members", InternalTraversal.dp_clauseelement),
        ("negate", InternalTraversal.dp_boolean),
    ]
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], name: str, *, negate: bool = False) -> None:
        self.column = column
        self.members: BindParameter[Any] = BindParameter(name, type_=_Members(column.type))
        self.negate = negate

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects

    def self_group(self, against: Any = None) -> InList:
        # A predicate already: no "= 1" where booleans are not native (SQLite).
        return self


def in_list(column: ColumnElement[Any], name: str) -> InList:
    """``column IN`` the list passed as parameter ``name`` (a list or tuple, any length)."""
    return InList(column, name)


def not_in_list(column: ColumnElement[Any], name: str) -> InList:
    """``column NOT IN`` the list passed as parameter ``name``."""
    return InList(column, name, negate=True)


@compiles(InList, "sqlite")
def _in_json_each(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    op = "NOT IN" if element.negate else "IN"
    column = compiler.process(element.column, **kw)
    members = compiler.process(element.members, **kw)
    return f"{column} {op} (SELECT value FROM json_each({members}))"


@compiles(InList)
def _in_array(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    """PostgreSQL: ``= ANY`` / ``<> ALL`` an array parameter (the planner
    turns a literal ``IN (a, b)`` into the same ``= ANY``)."""
    column = compiler.process(element.column, **kw)
    members = compiler.process(element.members, **kw)
    return f"{column} <> ALL ({members})" if element.negate else f"{column} = ANY ({members})"


def insert_ignoring(table: Any, *index_elements: str) -> Any:
    """``INSERT .. ON CONFLICT [(index_elements)] DO NOTHING`` for ``table``,
    one statement for both dialects (SQLite renders the same clause)."""
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements or None)


# --- the executors -------------------------------------------------------------------


class Executor(Protocol):
    async def rows(
        self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Sequence[Any]: ...

    async def run(self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS) -> int: ...

    async def many(self, statement: Any, params: Sequence[Mapping[str, Any]]) -> int: ...


def executor_for(conn: AsyncConnection) -> Executor:
    """The executor for ``conn``'s dialect (build one per unit of work)."""
    return SqliteExecutor(conn) if conn.dialect.name == "sqlite" else CoreExecutor(conn)


class CoreExecutor:
    """Statements through SQLAlchemy (``AsyncConnection.execute``)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def rows(self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS) -> Sequence[Any]:
        return (await self._conn.execute(statement, params)).all()

    async def run(self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS) -> int:
        return int((await self._conn.execute(statement, params)).rowcount or 0)

    async def many(self, statement: Any, params: Sequence[Mapping[str, Any]]) -> int:
        """The rows changed, or -1 where the driver does not count them over
        an executemany (asyncpg)."""
        if not params:
            return 0
        return int((await self._conn.execute(statement, list(params))).rowcount)


class Prepared:
    """A statement compiled once for the SQLite driver."""

    __slots__ = ("_defaults", "_get", "_lists", "row", "sql")

    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql: str = compiled.string
        if "POSTCOMPILE" in self.sql:
            raise ValueError("an expanding IN list cannot be prepared; use in_list(): " + self.sql)
        binds = compiled.binds
        names = tuple(compiled.positiontup or ())
        self._defaults = {
            name: binds[name].effective_value for name in names if not binds[name].required
        }
        self._lists = tuple(
            i for i, name in enumerate(names) if isinstance(binds[name].type, _Members)
        )
        self._get: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        if not names:
            self._get = lambda _values: ()
        elif len(names) == 1:
            one = itemgetter(names[0])
            self._get = lambda values: (one(values),)
        else:
            self._get = itemgetter(*names)
        # A SELECT's columns, or a DML statement's RETURNING ones (none without).
        columns = list(statement.exported_columns.keys())
        self.row: Any = namedtuple("Row", columns) if columns else None

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters (lists JSON-encoded) from named values."""
        if self._defaults:
            values = {**self._defaults, **values}
        try:
            out = self._get(values)
        except KeyError as missing:
            raise KeyError(f"missing parameter {missing.args[0]!r} for {self.sql!r}") from None
        if self._lists:
            listed = list(out)
            for i in self._lists:
                listed[i] = json_list(listed[i])
            return tuple(listed)
        return out

    def many_parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """``parameters`` of each row (one C-level pass when nothing needs filling in)."""
        if self._defaults or self._lists:
            return [self.parameters(row) for row in rows]
        try:
            return list(map(self._get, rows))
        except KeyError as missing:
            raise KeyError(f"missing parameter {missing.args[0]!r} for {self.sql!r}") from None


#: Compiled statements by statement. Executor statements are built once, so
#: this stays small; should per-call statements come through, it is emptied
#: rather than grown without bound.
_PREPARED: dict[Any, Prepared] = {}
_MAX_PREPARED = 1024


def prepared(statement: Any) -> Prepared:
    found = _PREPARED.get(statement)
    if found is None:
        if len(_PREPARED) >= _MAX_PREPARED:
            _PREPARED.clear()
        found = _PREPARED[statement] = Prepared(statement)
    return found


class SqliteExecutor:
    """One-trip execution of statements on one unit of work's SQLite connection."""

    __slots__ = ("_conn", "_raw")

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._raw: Any = None

    async def rows(self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS) -> list[Any]:
        """All result rows, as named tuples of the statement's columns."""
        p = prepared(statement)
        rows = await self._call("execute_fetchall", p.sql, p.parameters(params))
        make = p.row
        return [make._make(r) for r in rows] if make is not None else list(rows)

    async def run(self, statement: Any, params: Mapping[str, Any] = _NO_PARAMS) -> int:
        """Execute a statement without results; returns the rows it changed."""
        p = prepared(statement)
        return int((await self._call("execute", p.sql, p.parameters(params))).rowcount)

    async def many(self, statement: Any, params: Sequence[Mapping[str, Any]]) -> int:
        """One statement over many parameter sets; returns the rows it changed."""
        if not params:
            return 0
        p = prepared(statement)
        rows = await self._call("executemany", p.sql, p.many_parameters(params))
        return int(rows.rowcount)

    async def _driver(self) -> Any:
        if self._raw is None:
            self._raw = (await self._conn.get_raw_connection()).driver_connection
        return self._raw

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
