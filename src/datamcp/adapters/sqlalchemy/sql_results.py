"""Rows of a ``sql`` agent query: fetched on the sync side of the
connection (capped at the row limit, always rolled back), then shaped as
JSON: column names and types (from the driver, else inferred from the
values) and JSON-safe values."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

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


def fetch(
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


def shape(
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
