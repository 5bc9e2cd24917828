"""Batches as Arrow tables: the pipeline types of Arrow columns, and Python
rows (from sources that fetch: JSON Lines, SQL, HTTP, events) turned into
Arrow with the types of the first batch.

Pipeline types: string, integer, float, boolean, timestamp, json (JSON text;
objects and lists from a source are kept as JSON).

Arrow is imported when a batch is made, not with this module: the spec side
of the kinds (and the Lambda functions, whose package leaves the engine
out) import this module without it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

JSON_FIELD = b"datamcp.json"


@cache
def arrow_types() -> dict[str, pa.DataType]:
    """The Arrow type of each pipeline type."""
    import pyarrow as pa

    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "float": pa.float64(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "json": pa.string(),
    }


def kind_of(field: pa.Field) -> str:
    """The pipeline type of an Arrow column."""
    import pyarrow as pa

    t = field.type
    if field.metadata and field.metadata.get(JSON_FIELD):
        return "json"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_null(t):
        return "string"
    return "json"


def field(name: str, kind: str) -> pa.Field:
    import pyarrow as pa

    meta = {JSON_FIELD: b"1"} if kind == "json" else None
    return pa.field(name, arrow_types()[kind], metadata=meta)


def value_kind(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, dt.datetime | dt.date):
        return "timestamp"
    if isinstance(v, str):
        return "string"
    return "json"


def infer_kinds(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """Column types from values: one type, or integer+float = float; any other
    mix (or all null) is json when objects are involved, else string."""
    out: dict[str, str] = {}
    for i, col in enumerate(columns):
        seen = {value_kind(r[i]) for r in rows if i < len(r)} - {None}
        if len(seen) == 1:
            out[col] = seen.pop()  # type: ignore[assignment]
        elif seen == {"integer", "float"}:
            out[col] = "float"
        elif "json" in seen:
            out[col] = "json"
        else:
            out[col] = "string"
    return out


def json_text(v: Any) -> str:
    return json.dumps(json_safe(v), separators=(",", ":"), ensure_ascii=False)


def json_safe(value: Any) -> Any:
    """A value as JSON can hold it (for rejects, previews and JSON output)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _convert(kind: str, v: Any) -> Any:
    """``v`` as a value of ``kind``; raises ValueError when it is not one."""
    if v is None:
        return None
    if kind == "json":
        return json_text(v)
    if kind == "string":
        if isinstance(v, str):
            return v
        if isinstance(v, dict | list):
            return json_text(v)
        if isinstance(v, dt.datetime | dt.date):
            return v.isoformat()
        return str(v)
    actual = value_kind(v)
    if kind == "float" and actual in ("integer", "float"):
        return float(v)
    if actual != kind:
        raise ValueError(f"expected {kind}, got {actual}")
    if kind == "timestamp" and not isinstance(v, dt.datetime):
        return dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
    if kind == "timestamp" and v.tzinfo is None:
        return v.replace(tzinfo=dt.UTC)
    if kind == "integer" and not -(2**63) <= v < 2**63:
        raise ValueError("integer out of the 64-bit range")
    return v


def rows_to_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], kinds: Mapping[str, str]
) -> tuple[pa.Table, list[tuple[list[Any], str]]]:
    """Rows (lists in column order) as an Arrow table of ``kinds``; a row
    with a value that does not fit its column's type is returned as a
    reject (row, reason) instead."""
    import pyarrow as pa

    good: list[list[Any]] = []
    rejects: list[tuple[list[Any], str]] = []
    for row in rows:
        out: list[Any] = []
        try:
            for col, v in zip(columns, row, strict=True):
                try:
                    out.append(_convert(kinds[col], v))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{col}: {exc}") from None
        except ValueError as exc:
            rejects.append((list(row), str(exc)))
            continue
        good.append(out)
    types = arrow_types()
    arrays = [pa.array([r[i] for r in good], type=types[kinds[c]]) for i, c in enumerate(columns)]
    schema = pa.schema([field(c, kinds[c]) for c in columns])
    return pa.Table.from_arrays(arrays, schema=schema), rejects


class RowBatches:
    """Python rows from a source into Arrow batches whose column types are
    fixed by the first batch (a later value of another type rejects its
    row with the reason)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.kinds: dict[str, str] | None = None

    def table(
        self,
        rows: Sequence[Sequence[Any]],
        rejects: list[tuple[Any, str, int]],
        first_number: int = 0,
    ) -> tuple[pa.Table, list[tuple[Any, str, int]]]:
        if self.kinds is None:
            self.kinds = infer_kinds(self.columns, rows)
        table, bad = rows_to_table(self.columns, rows, self.kinds)
        out = list(rejects)
        out += [(row, reason, 0) for row, reason in bad]
        return table, out
