"""SQLite table destinations, written through ADBC's SQLite driver: Arrow
batches go in as bound columns (no Python object per value), in ONE
transaction per run committed after the last batch. ``append`` inserts,
``merge`` upserts on the keys from a temporary staging table (the last row
of a key wins; a unique index is created when missing), ``replace`` fills a
staging table and swaps it in (drop + rename) inside that same transaction.
A failed, cancelled or killed run leaves the table exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import adbc_driver_manager
import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc

from datamcp.adapters.pipelines.sql import quote as _q
from datamcp.adapters.pipelines.values import plain
from datamcp.core.pipelines.ports import PermanentError, TransientError, WriteResult

TYPES = {
    "integer": "INTEGER",
    "float": "REAL",
    "boolean": "INTEGER",
    "timestamp": "TEXT",
    "json": "TEXT",
    "string": "TEXT",
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]{0,62}$")


def _fail(exc: Exception, what: str) -> Exception:
    text = f"destination {what}: {str(exc).splitlines()[0][:300]}"
    if "locked" in text.lower() or "busy" in text.lower():
        return TransientError(text)
    return PermanentError(text, "DESTINATION_ERROR")


class SqliteTableDestination:
    def __init__(
        self, path: str, table: str, *, mode: str, keys: Sequence[str], contract: str, run_id: str
    ) -> None:
        self.path = path
        self.table = table
        self.mode = mode
        self.keys = list(keys)
        self.contract = contract
        self.stage = f"_stage_{table}_{run_id.replace('-', '')[:12]}"
        self._conn: Any = None
        self._cur: Any = None
        self._columns: list[str] = []
        self._kinds: list[str] = []
        self._target = table
        self._insert = ""

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        await asyncio.to_thread(self._open, list(columns), list(types))

    def _open(self, columns: list[str], types: list[str]) -> None:
        bad = [c for c in columns if not _NAME.match(c)]
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
        self._columns, self._kinds = columns, types
        try:
            self._conn = adbc.connect(self.path)
            self._cur = self._conn.cursor()
            self._cur.execute("PRAGMA busy_timeout = 30000")
            self._prepare(columns, types)
        except adbc_driver_manager.Error as exc:
            self._rollback()
            raise _fail(exc, "preparing the table") from None
        except PermanentError:
            self._rollback()
            raise

    def _sql(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        self._cur.execute(sql, parameters=params)
        try:
            return list(self._cur.fetchall())
        except adbc_driver_manager.Error:
            return []

    def _prepare(self, columns: list[str], types: list[str]) -> None:
        existing = [r[1] for r in self._sql(f"PRAGMA table_info({_q(self.table)})")]
        new = [c for c in columns if c not in existing]
        if existing and new and self.contract == "freeze":
            raise PermanentError(
                f"table {self.table} has no column(s) {', '.join(new)} and its contract is "
                "freeze; change the table or the pipeline",
                "SCHEMA_FROZEN",
            )
        if self.mode == "replace":
            self._target = self.stage
            self._sql(f"DROP TABLE IF EXISTS {_q(self.stage)}")
            self._create(self.stage, columns, types)
        elif not existing:
            self._create(self.table, columns, types)
        else:
            for c in new:
                kind = TYPES[types[columns.index(c)]]
                self._sql(f"ALTER TABLE {_q(self.table)} ADD COLUMN {_q(c)} {kind}")
        col_list = ", ".join(_q(c) for c in columns)
        self._insert = (
            f"INSERT INTO {_q(self._target)} ({col_list}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        if self.mode == "merge":
            keys = ", ".join(_q(k) for k in self.keys)
            index = _q("ux_" + self.table + "_" + "_".join(self.keys))
            self._sql(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {_q(self.table)} ({keys})")
            updates = ", ".join(
                f"{_q(c)} = excluded.{_q(c)}" for c in columns if c not in self.keys
            )
            action = f"UPDATE SET {updates}" if updates else "NOTHING"
            self._insert = (
                f"INSERT INTO {_q(self.table)} ({col_list}) SELECT {col_list} FROM "
                f"temp.{_q(self.stage)} WHERE true ORDER BY rowid ON CONFLICT ({keys}) DO {action}"
            )
            defs = ", ".join(_q(c) for c in columns)
            self._sql(f"CREATE TEMP TABLE {_q(self.stage)} ({defs})")

    def _create(self, name: str, columns: list[str], types: list[str]) -> None:
        defs = [f"{_q(c)} {TYPES[t]}" for c, t in zip(columns, types, strict=True)]
        if self.keys:
            defs.append(f"PRIMARY KEY ({', '.join(_q(k) for k in self.keys)})")
        self._sql(f"CREATE TABLE {_q(name)} ({', '.join(defs)})")

    async def write(self, table: pa.Table) -> WriteResult:
        return await asyncio.to_thread(self._write, table)

    def _write(self, table: pa.Table) -> WriteResult:
        table = plain(table, self._kinds)
        rejects: list[tuple[dict[str, Any], str]] = []
        if self.keys and self.mode == "merge":
            missing = pc.is_null(table.column(self.keys[0]))
            for k in self.keys[1:]:
                missing = pc.or_(missing, pc.is_null(table.column(k)))
            if pc.any(missing).as_py():
                rejects = [(r, "merge key is null") for r in table.filter(missing).to_pylist()]
                table = table.filter(pc.invert(missing))
        try:
            self._sql("SAVEPOINT batch")
            if self.mode == "merge":
                self._cur.adbc_ingest(self.stage, table, mode="append", temporary=True)
                self._sql(self._insert)
                self._sql(f"DELETE FROM temp.{_q(self.stage)}")
            else:
                self._cur.adbc_ingest(self._target, table, mode="append")
            self._sql("RELEASE batch")
        except adbc_driver_manager.Error as exc:
            if "constraint" not in str(exc).lower():
                raise _fail(exc, "writing rows") from None
            self._sql("ROLLBACK TO batch")
            return self._one_by_one(table, rejects)
        return WriteResult(table.num_rows, rejects)

    def _one_by_one(
        self, table: pa.Table, rejects: list[tuple[dict[str, Any], str]]
    ) -> WriteResult:
        """A constraint broke in this batch: find the rows, reject them, keep the rest."""
        written = 0
        single = self._insert
        if self.mode == "merge":
            single = single.replace(
                f"SELECT {', '.join(_q(c) for c in self._columns)} FROM temp.{_q(self.stage)} "
                "WHERE true ORDER BY rowid",
                f"VALUES ({', '.join('?' for _ in self._columns)})",
            )
        for row in table.to_pylist():
            try:
                self._sql(single, [row[c] for c in self._columns])
                written += 1
            except adbc_driver_manager.Error as exc:
                if "constraint" not in str(exc).lower():
                    raise _fail(exc, "writing rows") from None
                rejects.append((row, f"destination constraint: {str(exc).splitlines()[0][:200]}"))
        self._sql("RELEASE batch")
        return WriteResult(written, rejects)

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        try:
            if self.mode == "replace":
                self._sql(f"DROP TABLE IF EXISTS {_q(self.table)}")
                self._sql(f"ALTER TABLE {_q(self.stage)} RENAME TO {_q(self.table)}")
            self._conn.commit()
        except adbc_driver_manager.Error as exc:
            self._rollback()
            raise _fail(exc, "committing") from None
        self._close()

    def _rollback(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.rollback()
        self._close()

    def _close(self) -> None:
        for item in (self._cur, self._conn):
            if item is not None:
                with contextlib.suppress(Exception):
                    item.close()
        self._cur = self._conn = None

    async def abort(self) -> None:
        await asyncio.to_thread(self._rollback)
