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
import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from datamcp.adapters.sqlalchemy.engine import normalise_url
from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.errors import ConfigError

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Seconds a timed-out or cancelled query gets to be stopped in the database
#: (within the task's cancel grace).
STOP_TIMEOUT = 0.8

#: Words that only appear in statements that change something. A query that
#: contains one outside a literal or quoted name is refused.
_FORBIDDEN = frozenset(
    (
        *("ALTER", "ANALYZE", "ATTACH", "CALL", "COPY", "CREATE", "DELETE", "DETACH"),
        *("DROP", "EXEC", "EXECUTE", "GRANT", "INSERT", "INTO", "LOAD_EXTENSION"),
        *("LOCK", "MERGE", "PRAGMA", "REINDEX", "RENAME", "REVOKE", "TRUNCATE"),
        *("UPDATE", "UPSERT", "VACUUM"),
    )
)

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

#: PostgreSQL type OIDs (from the cursor description) to type names.
_PG_TYPES = {
    16: "boolean",
    17: "bytea",
    18: "char",
    19: "name",
    20: "bigint",
    21: "smallint",
    23: "integer",
    25: "text",
    26: "oid",
    114: "json",
    650: "cidr",
    700: "real",
    701: "double precision",
    869: "inet",
    1000: "boolean[]",
    1005: "smallint[]",
    1007: "integer[]",
    1009: "text[]",
    1016: "bigint[]",
    1021: "real[]",
    1022: "double precision[]",
    1042: "character",
    1043: "character varying",
    1082: "date",
    1083: "time",
    1114: "timestamp",
    1184: "timestamptz",
    1186: "interval",
    1231: "numeric[]",
    1266: "timetz",
    1700: "numeric",
    2950: "uuid",
    3802: "jsonb",
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
                        _fetch, setup, statement, params, limit
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
        return _shape(columns, rows, truncated)

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


def check_select(sql: str, dialect: str) -> str:
    """Check that ``sql`` is one SELECT statement and return the text to run.

    The text is cut at a final ``;``, and colons inside literals, quoted
    names and comments are escaped so only ``:name`` outside them binds.

    Raises:
        AgentError: reason ``SQL_NOT_ALLOWED``, saying what was found.
    """
    lexer = _PG_LEXER if dialect == "postgresql" else _SQLITE_LEXER
    out: list[str] = []
    words: list[str] = []
    ended = False
    for token in lexer.finditer(sql):
        kind, value = token.lastgroup, token.group()
        if kind in {"space", "comment"}:
            if kind == "comment" and "/*" in value[2:]:
                raise _refuse("nested comment")
            out.append(value.replace(":", "\\:"))
            continue
        if ended:
            raise _refuse("more than one statement")
        if kind == "open":
            raise _refuse(f"unterminated {value} quote or comment")
        if kind == "end":
            ended = True
        elif kind == "quoted":
            out.append(value.replace(":", "\\:"))
        else:
            if kind == "word":
                words.append(value.upper())
            out.append(value)
    if not words:
        raise _refuse("the query is empty")
    if words[0] not in {"SELECT", "WITH"}:
        raise _refuse(f"it starts with {words[0]}")
    found = sorted({w for w in words if w in _FORBIDDEN})
    if found:
        raise _refuse(f"it contains {', '.join(found)} (quote names that are these words)")
    return "".join(out).strip()


def _lexer(postgres: bool) -> re.Pattern[str]:
    """Tokens of a query; the first alternative that matches wins."""
    quoted = [
        r"'(?:[^']|'')*'",
        r'"(?:[^"]|"")*"',
        r"`(?:[^`]|``)*`",
    ]
    if postgres:
        # E'..' strings take backslash escapes; $tag$..$tag$ strings nothing.
        quoted[:0] = [r"[eE]'(?:[^'\\]|\\.|'')*'", r"\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$"]
    else:
        quoted.append(r"\[[^\]]*\]")
    parts = [
        r"(?P<space>\s+)",
        r"(?P<comment>--[^\n]*|/\*.*?\*/)",
        f"(?P<quoted>{'|'.join(quoted)})",
        r"(?P<open>/\*|['\"`" + ("" if postgres else r"\[") + r"])",
        r"(?P<word>[^\W\d][\w$]*)",
        r"(?P<end>;)",
        r"(?P<other>.)",
    ]
    return re.compile("|".join(parts), re.DOTALL)


_PG_LEXER = _lexer(postgres=True)
_SQLITE_LEXER = _lexer(postgres=False)


def _refuse(why: str) -> TaskRefused:
    return TaskRefused(
        f"only a single SELECT statement is allowed: {why}", reason="SQL_NOT_ALLOWED"
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


def _fetch(
    conn: Connection, setup: Sequence[str], statement: str, params: dict[str, Any], limit: int
) -> tuple[list[tuple[str, str | None]], list[Sequence[Any]], bool]:
    """Run the query on the sync side of the connection; always roll back."""
    try:
        for command in setup:
            conn.exec_driver_sql(command)
        result = conn.execution_options(stream_results=True).execute(text(statement), params)
        try:
            if not result.returns_rows:
                return [], [], False
            description = result.cursor.description if result.cursor is not None else None
            names = list(result.keys())
            type_codes: list[Any] = [d[1] for d in description] if description else []
            columns: list[tuple[str, str | None]] = [
                (str(name), _PG_TYPES.get(code) if isinstance(code, int) else None)
                for name, code in zip(names, type_codes or [None] * len(names), strict=True)
            ]
            rows: list[Sequence[Any]] = [tuple(row) for row in result.fetchmany(limit + 1)]
        finally:
            result.close()
        return columns, rows[:limit], len(rows) > limit
    finally:
        conn.rollback()


def _shape(
    columns: list[tuple[str, str | None]], rows: list[Sequence[Any]], truncated: bool
) -> dict[str, Any]:
    out_rows = [[_json_safe(v) for v in row] for row in rows]
    described = []
    for index, (name, type_name) in enumerate(columns):
        if type_name in {"json", "jsonb"}:
            for row in out_rows:
                if isinstance(row[index], str):
                    row[index] = json.loads(row[index])
        described.append({"name": name, "type": type_name or _infer([row[index] for row in rows])})
    return {
        "columns": described,
        "rows": out_rows,
        "row_count": len(out_rows),
        "truncated": truncated,
    }


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, decimal.Decimal):
        return "numeric"
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, dt.timedelta):
        return "interval"
    if isinstance(value, bytes | bytearray | memoryview):
        return "blob"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "json"
    return "text"


def _infer(values: Sequence[Any]) -> str:
    """A column's type from its Python values, when the driver does not say."""
    kinds = {_kind(v) for v in values} - {"null"}
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {"integer", "real", "numeric"}:
        return "real"
    return "mixed"


def _json_safe(value: Any) -> Any:
    """A JSON-serialisable form of a value a driver returned."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


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
