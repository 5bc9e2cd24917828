"""Table destinations on any database but SQLite (PostgreSQL) through
SQLAlchemy async. The whole run is ONE transaction, committed after the last
batch: append inserts, merge upserts on the keys (a unique index is created
when missing), replace fills a staging table and swaps it in (drop +
rename) inside that same transaction, so a failed, cancelled or killed run
leaves the table exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from datamcp.adapters.pipelines.sql import _fail, async_url
from datamcp.adapters.pipelines.sql import quote as _q
from datamcp.adapters.pipelines.values import python_rows
from datamcp.core.pipelines.checker import IDENT_RE, Checker
from datamcp.core.pipelines.ports import PermanentError, WriteResult

if TYPE_CHECKING:
    import pyarrow as pa

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


# ---- the ``table`` kind -------------------------------------------------------------------

KIND = "table"


def parse_destination(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("connection", "table", "mode", "keys", "contract"))
    table = c.string(o, "table", path, required=True)
    if table and not IDENT_RE.match(table):
        c.fail(f"{path}.table", "letters, digits and _ only, starting with a letter or _")
    out = {
        "connection": c.string(o, "connection", path, required=True),
        "table": table,
        "mode": c.choice(o, "mode", path, ("append", "replace", "merge")),
        "keys": c.names(o.get("keys"), f"{path}.keys", ident=True),
        "contract": c.choice(o, "contract", path, ("evolve", "freeze")),
    }
    if out["mode"] == "merge" and not out["keys"]:
        c.fail(f"{path}.keys", "required for mode merge (the primary key)")
    return out


def check_destination(
    connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]
) -> None:
    connectors.check_connection(o["connection"], f"{path}.connection", problems)


def destination(connectors: Any, o: Mapping[str, Any], run_id: str, where: str) -> Any:
    """SQLite through ADBC (``sqlite_table``), any other database here."""
    url = connectors.url(o["connection"], where)
    kw: dict[str, Any] = {
        "mode": o["mode"],
        "keys": o["keys"],
        "contract": o["contract"],
        "run_id": run_id,
    }
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise PermanentError(
                f"{where}: an in-memory SQLite database cannot be a destination",
                "INVALID_PIPELINE",
            )
        # ADBC is imported with the run, never with the spec (see csv.py).
        from datamcp.adapters.pipelines.sqlite_table import SqliteTableDestination

        return SqliteTableDestination(u.database, o["table"], **kw)
    return SqlAlchemyTableDestination(url, o["table"], **kw)
