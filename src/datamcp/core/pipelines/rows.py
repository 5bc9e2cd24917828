"""Rows, rejects and value conversions shared by the engine and the connectors.

A batch is a ``list`` of rows; a row is a ``list`` of values in the order of
the stage's columns (lists, so cast and derive can write in place).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.pipelines.model import Reject, StageCounters

Row = list[Any]
Batch = list[Row]


class StageError(Exception):
    """A stage cannot go on (not a bad row: the whole run fails)."""

    def __init__(self, message: str, reason: str = "STAGE_ERROR") -> None:
        super().__init__(message)
        self.reason = reason


def json_safe(value: Any) -> Any:
    """A value as JSON can hold it (for rejects, previews and JSON output)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def row_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    out = {c: json_safe(v) for c, v in zip(columns, row, strict=False)}
    if len(row) > len(columns):
        out["_extra"] = [json_safe(v) for v in row[len(columns) :]]
    return out


@dataclass(slots=True)
class RejectSink:
    """Counts every rejected row; keeps the first ``keep`` with their reasons
    (the rest are counted only, so a bad file cannot fill the database)."""

    keep: int = 1000
    kept: list[Reject] = field(default_factory=list)
    pending: list[Reject] = field(default_factory=list)
    total: int = 0

    def add(
        self,
        counters: StageCounters,
        columns: Sequence[str],
        row: Sequence[Any],
        reason: str,
        row_number: int = 0,
    ) -> None:
        counters.rejected += 1
        self.total += 1
        if len(self.kept) < self.keep:
            reject = Reject(counters.stage, reason[:1000], row_dict(columns, row), row_number)
            self.kept.append(reject)
            self.pending.append(reject)

    def take_pending(self) -> list[Reject]:
        out, self.pending = self.pending, []
        return out


# ---- type conversions (cast, validate.schema, destinations) ----------------------

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})


class CastError(ValueError):
    pass


def to_integer(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if type(v) is int:
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise CastError(f"{v!r} is not a whole number")
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                raise CastError(f"{v!r} is not an integer") from None
            if f.is_integer():
                return int(f)
            raise CastError(f"{v!r} is not a whole number") from None
    raise CastError(f"{type(v).__name__} is not an integer")


def to_float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise CastError(f"{v!r} is not a number") from None
    raise CastError(f"{type(v).__name__} is not a number")


def to_boolean(v: Any) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise CastError(f"{v!r} is not a boolean (true/false, yes/no, 1/0)")


def to_timestamp(v: Any) -> dt.datetime | None:
    """ISO 8601 text (or epoch seconds) to an aware UTC datetime."""
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        out = v
    elif isinstance(v, int | float) and not isinstance(v, bool):
        try:
            return dt.datetime.fromtimestamp(v, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise CastError(f"{v!r} is not a valid epoch time") from None
    elif isinstance(v, str):
        try:
            out = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CastError(f"{v!r} is not an ISO 8601 timestamp") from None
    else:
        raise CastError(f"{type(v).__name__} is not a timestamp")
    if out.tzinfo is None:
        out = out.replace(tzinfo=dt.UTC)
    return out.astimezone(dt.UTC)


def to_string(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def to_json(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            raise CastError(f"{v[:40]!r} is not JSON") from None
    return v


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "integer": to_integer,
    "float": to_float,
    "boolean": to_boolean,
    "timestamp": to_timestamp,
    "string": to_string,
    "json": to_json,
}


def value_type(v: Any) -> str | None:
    """The pipeline type of a Python value (None for null)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, dt.datetime):
        return "timestamp"
    if isinstance(v, dict | list):
        return "json"
    return "string"


def is_type(v: Any, kind: str) -> bool:
    t = value_type(v)
    return t is None or t == kind or (kind == "float" and t == "integer")


def infer_types(columns: Sequence[str], rows: Batch, declared: dict[str, str]) -> list[str]:
    """Column types: declared ones (from casts) first, else what the values are.

    Mixed integer/float is float; anything else mixed (or all null) is string.
    """
    out: list[str] = []
    for i, col in enumerate(columns):
        if col in declared:
            out.append(declared[col])
            continue
        seen: set[str] = set()
        for r in rows:
            t = value_type(r[i]) if i < len(r) else None
            if t is not None:
                seen.add(t)
                if len(seen) > 2:
                    break
        if len(seen) == 1:
            out.append(seen.pop())
        elif seen == {"integer", "float"}:
            out.append("float")
        else:
            out.append("string")
    return out
