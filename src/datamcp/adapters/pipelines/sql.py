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

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.frame import RowBatches
from datamcp.core.pipelines.limits import MAX_QUERY
from datamcp.core.pipelines.ports import (
    PermanentError,
    SourceBatch,
    TransientError,
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


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---- the ``sql`` kind ---------------------------------------------------------------------

KIND = "sql"


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("connection", "query", "params"))
    query = c.string(o, "query", path, required=True, limit=MAX_QUERY, control=True)
    if query and not re.match(r"^\s*(select|with)\b", query, re.IGNORECASE):
        c.fail(f"{path}.query", "only SELECT or WITH queries are allowed")
    return {
        "connection": c.string(o, "connection", path, required=True),
        "query": query,
        "params": dict(c.mapping(o.get("params"), f"{path}.params") or {}),
    }


def check_source(connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]) -> None:
    connectors.check_connection(o["connection"], f"{path}.connection", problems)


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> SqlSource:
    params = {**ctx.params, **o["params"]}
    if ctx.cursor_column:
        params.setdefault("cursor", ctx.cursor)
    return SqlSource(connectors.url(o["connection"], where), o["query"], params, display=where)
