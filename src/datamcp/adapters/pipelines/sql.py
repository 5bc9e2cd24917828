"""SQL sources and table destinations.

Sources run one SELECT/WITH query with bound parameters in a read-only
transaction (SQLAlchemy async: aiosqlite or asyncpg), streamed in batches.

Table destinations write the whole run in ONE transaction, committed after
the last batch: append inserts, merge upserts on the key columns, replace
fills a staging table and swaps it for the target (drop + rename) inside
that same transaction. A failed, cancelled or killed run therefore leaves
the table exactly as it was. SQLite destinations use the ``sqlite3`` driver
directly on a worker thread (``executemany`` per batch: the fast path);
other databases go through SQLAlchemy async.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from datamcp.adapters.pipelines.values import plain
from datamcp.core.pipelines.frame import RowBatches
from datamcp.core.pipelines.ports import (
    PermanentError,
    SourceBatch,
    TransientError,
    WriteResult,
)

Batch = list[list[Any]]


def async_url(url: str) -> str:
    """The async driver URL for a configured connection URL."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    return url


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    text = str(exc).lower()
    return isinstance(exc, OperationalError) and any(
        w in text for w in ("locked", "connection", "timeout", "could not connect", "refused")
    )


_CLASS = re.compile(r"<class '[^']*'>:?\s*")
_ARGUMENT = re.compile(r"invalid input for query argument \$(\d+):.*?(\((?:[^()]*)\))?$")


def describe(exc: BaseException) -> str:
    """The database's own words for a failure, for the caller: the first
    line only, without the driver's class names, the statement or the
    parameter values (a bound value can be another tenant's data in a
    shared log, and is never needed to fix the query)."""
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    text = _CLASS.sub("", text.split("[SQL:")[0]).strip()
    text = (text.splitlines() or [""])[0]
    found = _ARGUMENT.match(text)
    if found is not None:
        why = f" {found.group(2)}" if found.group(2) else ""
        return f"query parameter {found.group(1)} has a value the database cannot take{why}"
    if text.startswith("Error binding parameter"):
        return "a query parameter has a value the database cannot take"
    return text[:300] or "the database refused the statement"


def _fail(exc: BaseException, what: str, reason: str) -> Exception:
    message = f"{what}: {describe(exc)}"
    if _transient(exc):
        return TransientError(message)
    return PermanentError(message, reason)


def _bindable(name: str, value: Any) -> str | None:
    """Why a parameter value cannot be bound to a query, or None."""
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**63 else f":{name} is outside the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f":{name} is not a finite number"
    return f":{name} must be a string, number, boolean or null, not a list or mapping"


_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


class SqlSource:
    def __init__(
        self, url: str, query: str, params: Mapping[str, Any], *, display: str = ""
    ) -> None:
        self.url = async_url(url)
        self.query = query
        self.params = dict(params)
        self.display = display
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._result: Any = None
        self._columns: list[str] = []
        self._batches: RowBatches | None = None

    async def open(self) -> list[str]:
        names = set(_PARAM.findall(self.query))
        missing = sorted(n for n in names if n not in self.params)
        if missing:
            raise PermanentError(
                f"{self.display}: query parameter(s) {', '.join(':' + m for m in missing)} "
                "have no value (give them in params or run params)",
                "SOURCE_ERROR",
            )
        bound = {k: v for k, v in self.params.items() if k in names}
        for name, value in bound.items():
            problem = _bindable(name, value)
            if problem is not None:
                raise PermanentError(f"{self.display}: query parameter {problem}", "SOURCE_ERROR")
        try:
            self._engine = create_async_engine(self.url, pool_pre_ping=False)
            self._conn = await self._engine.connect()
            # One transaction, begun before any statement (a statement first
            # would autobegin one, and begin() would then refuse).
            await self._conn.begin()
            if self._conn.dialect.name == "sqlite":
                await self._conn.exec_driver_sql("PRAGMA query_only = ON")
            else:
                await self._conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            self._result = await self._conn.stream(sa.text(self.query), bound)
            self._columns = list(self._result.keys())
            self._batches = RowBatches(self._columns)
        except SQLAlchemyError as exc:
            await self.close()
            raise _fail(exc, f"{self.display} query failed", "SOURCE_ERROR") from None
        except OSError as exc:
            await self.close()
            raise TransientError(f"{self.display}: cannot connect: {describe(exc)}") from None
        except (ValueError, TypeError, OverflowError) as exc:  # the driver refused a value
            await self.close()
            raise PermanentError(
                f"{self.display} query failed: {describe(exc)}", "SOURCE_ERROR"
            ) from None
        return list(self._columns)

    async def read(self, size: int) -> SourceBatch | None:
        if self._result is None:
            return None
        try:
            rows = await self._result.fetchmany(size)
        except (SQLAlchemyError, ValueError, TypeError, OverflowError) as exc:
            raise _fail(exc, f"{self.display} query failed", "SOURCE_ERROR") from None
        if not rows:
            return None
        assert self._batches is not None
        table, rejects = self._batches.table([list(r) for r in rows], [])
        return SourceBatch(table, rejects)

    async def close(self) -> None:
        if self._result is not None:
            with contextlib.suppress(Exception):
                await self._result.close()
            self._result = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


# ---- destinations ---------------------------------------------------------------------

_SQLITE_TYPES = {
    "integer": "INTEGER",
    "float": "REAL",
    "boolean": "INTEGER",
    "timestamp": "TEXT",
    "json": "TEXT",
    "string": "TEXT",
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(table: pa.Table, kinds: Sequence[str]) -> Batch:
    cols = [c.to_pylist() for c in plain(table, kinds).columns]
    return [list(r) for r in zip(*cols, strict=True)]


def _row_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns, row, strict=False))


class SqliteTableDestination:
    """The fast path: ``sqlite3`` on a worker thread, one transaction per run."""

    def __init__(
        self,
        path: str,
        table: str,
        *,
        mode: str,
        keys: Sequence[str],
        contract: str,
        run_id: str,
    ) -> None:
        self.path = path
        self.table = table
        self.mode = mode
        self.keys = list(keys)
        self.contract = contract
        self.stage = f"_stage_{table}_{run_id.replace('-', '')[:12]}"
        self._db: sqlite3.Connection | None = None
        self._sql = ""
        self._columns: list[str] = []
        self._kinds: list[str] = []
        self._key_index: list[int] = []

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        await asyncio.to_thread(self._open, list(columns), list(types))

    def _open(self, columns: list[str], types: list[str]) -> None:
        bad = [c for c in columns if not re.match(r"^[A-Za-z_][A-Za-z0-9_ ]{0,62}$", c)]
        if bad:
            raise PermanentError(
                f"column name(s) {', '.join(map(repr, bad))} cannot be table columns; rename them",
                "DESTINATION_ERROR",
            )
        missing = [k for k in self.keys if k not in columns]
        if missing:
            raise PermanentError(
                f"destination.table.keys: {', '.join(missing)} not among the row columns "
                f"({', '.join(columns)})",
                "INVALID_PIPELINE",
            )
        try:
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise TransientError(f"cannot open destination database: {exc}") from None
        self._db = db
        try:
            db.execute("BEGIN IMMEDIATE")
            existing = [r[1] for r in db.execute(f"PRAGMA table_info({_q(self.table)})")]
            target = self.table
            if self.mode == "replace":
                if existing and self.contract == "freeze":
                    self._frozen(existing, columns)
                target = self.stage
                db.execute(f"DROP TABLE IF EXISTS {_q(target)}")
                self._create(target, columns, types)
            elif not existing:
                self._create(target, columns, types)
            else:
                new = [c for c in columns if c not in existing]
                if new and self.contract == "freeze":
                    self._frozen(existing, columns)
                for c in new:
                    kind = _SQLITE_TYPES[types[columns.index(c)]]
                    db.execute(f"ALTER TABLE {_q(target)} ADD COLUMN {_q(c)} {kind}")
                if self.mode == "merge":
                    key_list = ", ".join(_q(k) for k in self.keys)
                    db.execute(
                        f"CREATE UNIQUE INDEX IF NOT EXISTS "
                        f"{_q('ux_' + self.table + '_' + '_'.join(self.keys))} "
                        f"ON {_q(target)} ({key_list})"
                    )
        except sqlite3.Error as exc:
            self._rollback()
            raise _sqlite_fail(exc, "preparing the destination table") from None
        col_list = ", ".join(_q(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {_q(target)} ({col_list}) VALUES ({marks})"
        if self.mode == "merge":
            updates = ", ".join(
                f"{_q(c)} = excluded.{_q(c)}" for c in columns if c not in self.keys
            )
            conflict = ", ".join(_q(k) for k in self.keys)
            sql += f" ON CONFLICT ({conflict}) DO " + (
                f"UPDATE SET {updates}" if updates else "NOTHING"
            )
        self._sql = sql
        self._columns, self._kinds = columns, types
        self._key_index = [columns.index(k) for k in self.keys] if self.mode == "merge" else []

    def _frozen(self, existing: list[str], columns: list[str]) -> None:
        new = [c for c in columns if c not in existing]
        if new:
            raise PermanentError(
                f"table {self.table} has no column(s) {', '.join(new)} and its contract is "
                "freeze; change the table or the pipeline",
                "SCHEMA_FROZEN",
            )

    def _create(self, name: str, columns: list[str], types: list[str]) -> None:
        assert self._db is not None
        defs = [f"{_q(c)} {_SQLITE_TYPES[t]}" for c, t in zip(columns, types, strict=True)]
        if self.keys:
            defs.append(f"PRIMARY KEY ({', '.join(_q(k) for k in self.keys)})")
        self._db.execute(f"CREATE TABLE {_q(name)} ({', '.join(defs)})")

    async def write(self, table: pa.Table) -> WriteResult:
        return await asyncio.to_thread(self._write, table)

    def _write(self, table: pa.Table) -> WriteResult:
        assert self._db is not None
        rows = _rows(table, self._kinds)
        rejects: list[tuple[dict[str, Any], str]] = []
        if self._key_index:
            good = []
            for r in rows:
                if any(r[i] is None for i in self._key_index):
                    rejects.append((_row_dict(self._columns, r), "merge key is null"))
                else:
                    good.append(r)
            rows = good
        db = self._db
        try:
            db.execute("SAVEPOINT batch")
            db.executemany(self._sql, rows)
            db.execute("RELEASE batch")
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO batch")
            return self._one_by_one(rows, rejects)
        except sqlite3.Error as exc:
            raise _sqlite_fail(exc, "writing rows") from None
        return WriteResult(len(rows), rejects)

    def _one_by_one(self, rows: Batch, rejects: list[tuple[dict[str, Any], str]]) -> WriteResult:
        """A constraint broke in this batch: find the rows, reject them, keep the rest."""
        assert self._db is not None
        written = 0
        for r in rows:
            try:
                self._db.execute(self._sql, r)
                written += 1
            except sqlite3.IntegrityError as exc:
                rejects.append((_row_dict(self._columns, r), f"destination constraint: {exc}"))
            except sqlite3.Error as exc:
                raise _sqlite_fail(exc, "writing rows") from None
        self._db.execute("RELEASE batch")
        return WriteResult(written, rejects)

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        assert self._db is not None
        try:
            if self.mode == "replace":
                self._db.execute(f"DROP TABLE IF EXISTS {_q(self.table)}")
                self._db.execute(f"ALTER TABLE {_q(self.stage)} RENAME TO {_q(self.table)}")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _sqlite_fail(exc, "committing") from None
        self._db.close()
        self._db = None

    def _rollback(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._db.close()
            self._db = None

    async def abort(self) -> None:
        await asyncio.to_thread(self._rollback)


def _sqlite_fail(exc: sqlite3.Error, what: str) -> Exception:
    text = f"destination {what}: {exc}"
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return TransientError(text)
    return PermanentError(text, "DESTINATION_ERROR")


_SA_TYPES: dict[str, Any] = {
    "integer": sa.BigInteger,
    "float": sa.Float,
    "boolean": sa.Boolean,
    "timestamp": sa.DateTime(timezone=True),
    "json": sa.JSON,
    "string": sa.Text,
}


class SqlAlchemyTableDestination:
    """Any other database (PostgreSQL) through SQLAlchemy async; values are
    converted to the column types first, and rows that do not convert are
    rejected rather than failing the batch."""

    def __init__(
        self,
        url: str,
        table: str,
        *,
        mode: str,
        keys: Sequence[str],
        contract: str,
        run_id: str,
    ) -> None:
        self.url = async_url(url)
        self.table = table
        self.mode = mode
        self.keys = list(keys)
        self.contract = contract
        self.stage = f"_stage_{table}_{run_id.replace('-', '')[:12]}"
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._target: sa.Table | None = None
        self._columns: list[str] = []
        self._kinds: list[str] = []
        self._stmt: Any = None

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        self._columns = list(columns)
        missing = [k for k in self.keys if k not in columns]
        if missing:
            raise PermanentError(
                f"destination.table.keys: {', '.join(missing)} not among the row columns",
                "INVALID_PIPELINE",
            )
        try:
            self._engine = create_async_engine(self.url)
            self._conn = await self._engine.connect()
            await self._conn.begin()
            existing = await self._conn.run_sync(_existing_columns, self.table)
            meta = sa.MetaData()
            known = {c.name: c for c in existing} if existing else {}
            if existing and (self.mode != "replace" or self.contract == "freeze"):
                new = [c for c in columns if c not in known]
                if new and self.contract == "freeze":
                    raise PermanentError(
                        f"table {self.table} has no column(s) {', '.join(new)} and its contract "
                        "is freeze; change the table or the pipeline",
                        "SCHEMA_FROZEN",
                    )
            specs = []
            for c, t in zip(columns, types, strict=True):
                specs.append(sa.Column(c, _SA_TYPES[t], primary_key=c in self.keys, nullable=True))
            if self.mode == "replace":
                await self._conn.execute(sa.text(f"DROP TABLE IF EXISTS {_q(self.stage)}"))
                target = sa.Table(self.stage, meta, *specs)
                await self._conn.run_sync(target.create)
            elif not existing:
                target = sa.Table(self.table, meta, *specs)
                await self._conn.run_sync(target.create)
            else:
                for c, t in zip(columns, types, strict=True):
                    if c not in known:
                        kind = sa.Column(c, _SA_TYPES[t]).type.compile(self._conn.dialect)
                        await self._conn.execute(
                            sa.text(f"ALTER TABLE {_q(self.table)} ADD COLUMN {_q(c)} {kind}")
                        )
                if self.mode == "merge":
                    key_list = ", ".join(_q(k) for k in self.keys)
                    index = _q("ux_" + self.table + "_" + "_".join(self.keys))
                    await self._conn.execute(
                        sa.text(
                            f"CREATE UNIQUE INDEX IF NOT EXISTS {index} "
                            f"ON {_q(self.table)} ({key_list})"
                        )
                    )
                target = sa.Table(self.table, meta, *specs)
        except PermanentError:
            await self.abort()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await self.abort()
            raise _fail(exc, "preparing the destination table", "DESTINATION_ERROR") from None
        self._target = target
        self._kinds = list(types)
        if self.mode == "merge":
            from sqlalchemy.dialects import postgresql

            stmt = postgresql.insert(target)
            others = {c: stmt.excluded[c] for c in columns if c not in self.keys}
            self._stmt = (
                stmt.on_conflict_do_update(index_elements=self.keys, set_=others)
                if others
                else stmt.on_conflict_do_nothing(index_elements=self.keys)
            )
        else:
            self._stmt = sa.insert(target)

    async def write(self, table: pa.Table) -> WriteResult:
        assert self._conn is not None
        from datamcp.adapters.pipelines.values import python_rows

        rejects: list[tuple[dict[str, Any], str]] = []
        records = []
        cols = self._columns
        for r in python_rows(table, self._kinds):
            record = dict(zip(cols, r, strict=True))
            if self.keys and any(record[k] is None for k in self.keys):
                rejects.append((record, "key is null"))
                continue
            records.append(record)
        if not records:
            return WriteResult(0, rejects)
        try:
            await self._conn.execute(self._stmt, records)
        except (SQLAlchemyError, OSError) as exc:
            raise _fail(exc, "destination write failed", "DESTINATION_ERROR") from None
        return WriteResult(len(records), rejects)

    async def commit(self) -> None:
        assert self._conn is not None
        try:
            if self.mode == "replace":
                await self._conn.execute(sa.text(f"DROP TABLE IF EXISTS {_q(self.table)}"))
                await self._conn.execute(
                    sa.text(f"ALTER TABLE {_q(self.stage)} RENAME TO {_q(self.table)}")
                )
            await self._conn.commit()
        except (SQLAlchemyError, OSError) as exc:
            await self.abort()
            raise _fail(exc, "destination commit failed", "DESTINATION_ERROR") from None
        await self._close()

    async def abort(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.rollback()
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _existing_columns(conn: sa.Connection, table: str) -> list[Any]:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table):
        return []
    return [sa.Column(c["name"], c["type"]) for c in inspector.get_columns(table)]
