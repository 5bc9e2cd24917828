"""The ``sql`` agent: read-only queries against configured databases.

Only one ``SELECT`` (or ``WITH ... SELECT``) statement is accepted; values
come in as bound parameters (``:name``), never as text. As a second line of
defence every query runs read-only: in a ``READ ONLY`` transaction with a
``statement_timeout`` on PostgreSQL, on connections opened with
``PRAGMA query_only=ON`` on SQLite. Give the agent a database user that may
only read what it should, too: the checks here stop writes, not reads of
sensitive tables or calls of privileged functions.

With PostgreSQL, parameters are typed from their use (asyncpg): compare a
date column with ``CAST(:day AS text)::date`` to pass the day as a string.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from datamcp.adapters.sqlalchemy.engine import normalise_url
from datamcp.adapters.sqlalchemy.sql_results import fetch, shape
from datamcp.adapters.sqlalchemy.sql_statement import check_select
from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.errors import ConfigError

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Seconds a timed-out or cancelled query gets to be stopped in the database
#: (within the task's cancel grace).
STOP_TIMEOUT = 0.8

_QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["connection", "query"],
    "additionalProperties": False,
    "properties": {
        "connection": {"type": "string", "minLength": 1, "description": "configured name"},
        "query": {
            "type": "string",
            "minLength": 1,
            "description": "one SELECT (or WITH ... SELECT); values as :name parameters",
        },
        "params": {
            "type": "object",
            "description": "bound parameters by name",
            "propertyNames": {"pattern": _PARAM_NAME.pattern},
            "additionalProperties": {
                "type": ["string", "number", "integer", "boolean", "null", "array"]
            },
        },
        "limit": {"type": "integer", "minimum": 1, "description": "capped at row_limit"},
    },
}

_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["columns", "rows", "row_count", "truncated"],
    "properties": {
        "columns": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
            },
        },
        "rows": {"type": "array", "items": {"type": "array"}},
        "row_count": {"type": "integer"},
        "truncated": {"type": "boolean"},
    },
}


#: SQLSTATE classes/codes meaning "the database is not there right now".
_PG_UNAVAILABLE = ("08", "53", "57P", "40001", "40P01")


class SqlAgent(Agent):
    """Runs read-only SQL against named connections.

    Config keys:
        connections: name -> SQLAlchemy URL (``sqlite:``/``postgresql:`` URLs
            get the async driver).
        row_limit: most rows one query returns (default 1000).
        connect_timeout: seconds to open a connection (default 5).
        pool_size: connections kept per PostgreSQL database (default 5).
    """

    name = "sql"
    description = "Read-only SQL queries (one SELECT, bound parameters) on configured databases"
    capabilities = (
        Capability(
            "sql.query",
            "Run one SELECT statement with bound parameters; rows are capped at the row limit",
            _QUERY_SCHEMA,
            _RESULT_SCHEMA,
        ),
    )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        problems: list[str] = []
        connections = self.config.get("connections", {})
        self._urls: dict[str, URL] = {}
        if not isinstance(connections, Mapping):
            problems.append("sql agent: connections must be a table of name = URL")
            connections = {}
        for conn_name, raw in connections.items():
            try:
                url = normalise_url(str(raw))
            except SQLAlchemyError as exc:
                problems.append(f"sql agent: connection {conn_name!r}: bad URL ({exc})")
                continue
            if url.get_backend_name() not in {"sqlite", "postgresql"}:
                problems.append(
                    f"sql agent: connection {conn_name!r}: only sqlite and postgresql "
                    "can be queried read-only"
                )
                continue
            self._urls[str(conn_name)] = url
        self.row_limit = int(_positive(self.config, "row_limit", 1000, problems, whole=True))
        self.pool_size = int(_positive(self.config, "pool_size", 5, problems, whole=True))
        self.connect_timeout = _positive(self.config, "connect_timeout", 5.0, problems)
        if problems:
            raise ConfigError(problems)
        self._engines: dict[str, AsyncEngine] = {}
        self._lock = asyncio.Lock()

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if capability != "sql.query":
            raise TaskRefused(f"sql agent has no capability {capability}", reason="NO_CAPABILITY")
        conn_name, url, query, params, limit = self._parse(payload)
        dialect = url.get_backend_name()
        statement = check_select(query, dialect)
        budget = ctx.remaining()
        if budget <= 0:
            raise AgentError("no time left to run the query", reason="SQL_TIMEOUT")
        setup: list[str] = []
        if dialect == "postgresql":
            setup = [
                "SET TRANSACTION READ ONLY",
                f"SET LOCAL statement_timeout = {max(1, int(budget * 1000))}",
            ]
        try:
            async with asyncio.timeout(budget):
                engine = await self._engine(conn_name, url)
                try:
                    conn = await engine.connect()
                except (SQLAlchemyError, OSError) as exc:
                    raise AgentError(
                        f"cannot connect to {conn_name}: {_short(exc)}",
                        reason="SQL_UNAVAILABLE",
                        retryable=True,
                    ) from exc
                watchdog = None
                driver: Any = (await conn.get_raw_connection()).driver_connection
                # Taken now: a cancelled query may leave the driver object unusable.
                target = driver if dialect == "sqlite" else driver.get_server_pid()
                if dialect == "sqlite":
                    # SQLite runs on a worker thread that cancelling does not
                    # stop: interrupt the statement itself at the deadline.
                    watchdog = asyncio.create_task(_interrupt_after(driver, budget))
                try:
                    columns, rows, truncated = await conn.run_sync(
                        fetch, setup, statement, params, limit
                    )
                except asyncio.CancelledError:  # the deadline, or the task was cancelled
                    await _stop_statement(engine, target, dialect)
                    raise
                finally:
                    if watchdog is not None:
                        watchdog.cancel()  # before the connection can serve another query
                    await conn.close()
        except TimeoutError as exc:
            raise AgentError(
                f"query on {conn_name} did not finish in time", reason="SQL_TIMEOUT"
            ) from exc
        except AgentError:
            raise
        except Exception as exc:
            if isinstance(exc, SQLAlchemyError | OSError) or getattr(exc, "sqlstate", None):
                raise _classify(conn_name, exc) from exc
            raise
        return shape(columns, rows, truncated)

    def _parse(self, payload: Any) -> tuple[str, URL, str, dict[str, Any], int]:
        """Connection name, its URL, query, parameters and row limit of a request."""
        if not isinstance(payload, Mapping):
            raise TaskRefused("input must be an object", reason="INVALID_INPUT")
        conn_name = payload.get("connection")
        query = payload.get("query")
        params = payload.get("params") or {}
        limit = payload.get("limit", self.row_limit)
        if not isinstance(query, str) or not isinstance(conn_name, str):
            raise TaskRefused("connection and query must be strings", reason="INVALID_INPUT")
        if not isinstance(params, Mapping) or not all(
            isinstance(k, str) and _PARAM_NAME.match(k) for k in params
        ):
            raise TaskRefused("params must map parameter names to values", reason="INVALID_INPUT")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TaskRefused("limit must be a positive integer", reason="INVALID_INPUT")
        url = self._urls.get(conn_name)
        if url is None:
            known = ", ".join(sorted(self._urls)) or "none configured"
            raise TaskRefused(
                f"unknown connection {conn_name!r} (known: {known})", reason="UNKNOWN_CONNECTION"
            )
        return conn_name, url, query, dict(params), min(limit, self.row_limit)

    async def close(self) -> None:
        async with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.dispose()

    async def _engine(self, conn_name: str, url: URL) -> AsyncEngine:
        async with self._lock:
            engine = self._engines.get(conn_name)
            if engine is None:
                engine = self._engines[conn_name] = self._create_engine(conn_name, url)
            return engine

    def _create_engine(self, conn_name: str, url: URL) -> AsyncEngine:
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            is_file = database not in {"", ":memory:"} and not url.query.get("uri")
            if is_file and not Path(database).is_file():
                # Connecting would create an empty database file.
                raise AgentError(
                    f"connection {conn_name}: database file {database} does not exist",
                    reason="SQL_UNAVAILABLE",
                )
            engine = create_async_engine(url, connect_args={"timeout": self.connect_timeout})
            event.listen(engine.sync_engine, "connect", _sqlite_read_only)
            return engine
        return create_async_engine(
            url,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_pre_ping=True,
            pool_timeout=self.connect_timeout,
            connect_args={"timeout": self.connect_timeout},
        )


async def _stop_statement(engine: AsyncEngine, target: Any, dialect: str) -> None:
    """Stop the statement running on ``target`` (the SQLite driver connection,
    or the PostgreSQL server process id) in the database itself, and
    wait until it is told (at most STOP_TIMEOUT): abandoning the client side
    alone leaves a query such as ``pg_sleep`` running on the server. A second
    cancellation while this runs (the task's deadline right after the query's
    own timeout) does not cut it short; the caller re-raises the first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.ensure_future(_cancel_in_database(engine, target, dialect))
    until = loop.time() + STOP_TIMEOUT
    while not stop.done() and (left := until - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({stop}, timeout=left)
    if not stop.done():
        stop.cancel()
    elif not stop.cancelled():
        stop.exception()  # best effort: a failure here changes nothing for the caller


async def _cancel_in_database(engine: AsyncEngine, target: Any, dialect: str) -> None:
    if dialect == "sqlite":
        await target.interrupt()
        return
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": target})


async def _interrupt_after(driver: Any, delay: float) -> None:
    await asyncio.sleep(delay)
    interrupt = getattr(driver, "interrupt", None)
    if interrupt is not None:
        await interrupt()


def _classify(conn_name: str, exc: Exception) -> AgentError:
    """An agent error for a failed query.

    Errors come wrapped by SQLAlchemy, or as the driver's own (server-side
    cursors raise those unwrapped); SQLSTATE codes tell them apart.
    """
    if isinstance(exc, OSError):
        return AgentError(
            f"lost the connection to {conn_name}: {exc}", reason="SQL_UNAVAILABLE", retryable=True
        )
    if isinstance(exc, SQLAlchemyError) and not isinstance(exc, DBAPIError):
        return TaskRefused(f"query failed: {_short(exc)}", reason="SQL_ERROR")
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    state = str(getattr(orig, "sqlstate", None) or "")
    if invalidated or (state and state.startswith(_PG_UNAVAILABLE)):
        return AgentError(
            f"{conn_name} is unavailable: {_short(exc)}", reason="SQL_UNAVAILABLE", retryable=True
        )
    if state == "57014":
        return AgentError(
            f"query on {conn_name} was cancelled: {_short(exc)}", reason="SQL_TIMEOUT"
        )
    if state == "25006" or getattr(orig, "sqlite_errorname", "") == "SQLITE_READONLY":
        return TaskRefused(
            f"the query tried to write through a read-only connection: {_short(exc)}",
            reason="SQL_NOT_ALLOWED",
        )
    if getattr(orig, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
        return AgentError(f"query on {conn_name} did not finish in time", reason="SQL_TIMEOUT")
    if getattr(orig, "sqlite_errorname", "") in {"SQLITE_BUSY", "SQLITE_LOCKED"}:
        return AgentError(
            f"{conn_name} is busy: {_short(exc)}", reason="SQL_UNAVAILABLE", retryable=True
        )
    return TaskRefused(f"query failed: {_short(exc)}", reason="SQL_ERROR")


def _short(exc: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's statement dump."""
    message = str(getattr(exc, "orig", None) or exc)
    return message.strip().splitlines()[0][:500] if message.strip() else type(exc).__name__


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _positive(
    config: Mapping[str, Any], key: str, default: float, problems: list[str], whole: bool = False
) -> float:
    value = config.get(key, default)
    kinds = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "a positive integer" if whole else "a positive number"
        problems.append(f"sql agent: {key} must be {what}, got {value!r}")
        return default
    return float(value)
