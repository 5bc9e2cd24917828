"""Running per-column statistics of rows (the ``profile`` agent's counting).

Rows are fed in as (column name, raw value) pairs; each value is classified
(null, boolean, integer, real, date, datetime, text, json; CSV text is read
as a number or boolean when it is one) and counted. Distinct values are
counted up to ``max_distinct`` per column; past that ``distinct`` is a lower
bound, ``top`` counts are approximate and ``distinct_capped`` is true.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

_INT = re.compile(r"^[+-]?\d{1,18}$")
_REAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_KEY_CHARS = 200  # longer strings are keyed by a prefix and a digest
_NUMERIC = frozenset({"integer", "real"})
_TEMPORAL = frozenset({"date", "datetime"})


class Column:
    """Running statistics of one column."""

    __slots__ = (
        "bools",
        "capped",
        "counts",
        "float_sum",
        "int_sum",
        "kinds",
        "name",
        "num_max",
        "num_min",
        "numbers",
        "str_max",
        "str_min",
        "values",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.values = 0
        self.kinds: Counter[str] = Counter()
        self.counts: dict[tuple[Any, ...], int] = {}
        self.capped = False
        self.numbers = 0
        self.int_sum = 0
        self.float_sum = 0.0
        self.num_min: float | None = None
        self.num_max: float | None = None
        self.str_min: str | None = None
        self.str_max: str | None = None
        self.bools: set[bool] = set()

    def add(self, kind: str, value: Any, max_distinct: int) -> None:
        self.values += 1
        self.kinds[kind] += 1
        if kind in _NUMERIC:
            self.numbers += 1
            if kind == "integer":
                self.int_sum += value
            else:
                self.float_sum += value
            if self.num_min is None or value < self.num_min:
                self.num_min = value
            if self.num_max is None or value > self.num_max:
                self.num_max = value
            key: tuple[Any, ...] = ("n", value)
        elif kind == "boolean":
            self.bools.add(value)
            key = ("b", value)
        elif kind == "json":
            text = json.dumps(value, sort_keys=True, default=str)
            key = ("j", *_short_key(text))
        else:
            if self.str_min is None or value < self.str_min:
                self.str_min = value
            if self.str_max is None or value > self.str_max:
                self.str_max = value
            key = ("s", *_short_key(value))
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < max_distinct:
            self.counts[key] = 1
        else:
            self.capped = True

    def summary(self, rows: int, top: int) -> dict[str, Any]:
        kind = _column_type(set(self.kinds))
        low: Any = None
        high: Any = None
        mean: float | None = None
        if kind in _NUMERIC and self.numbers:
            low, high = self.num_min, self.num_max
            mean = (self.int_sum + self.float_sum) / self.numbers
        elif kind == "boolean":
            low, high = min(self.bools), max(self.bools)
        elif kind in {"text", "date", "datetime"}:
            low, high = self.str_min, self.str_max
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0][1])))
        return {
            "name": self.name,
            "type": kind,
            "types": dict(self.kinds.most_common()),
            "count": self.values,
            "nulls": rows - self.values,
            "distinct": len(self.counts),
            "distinct_capped": self.capped,
            "min": low,
            "max": high,
            "mean": mean,
            "top": [{"value": key[1], "count": count} for key, count in ranked[:top]],
        }


class Profile:
    """Columns being profiled; rows are fed in as (name, raw value) pairs."""

    def __init__(
        self, *, csv_text: bool, wanted: Sequence[str] | None, max_columns: int, max_distinct: int
    ) -> None:
        self.csv_text = csv_text
        self.wanted = set(wanted) if wanted else None
        self.max_columns = max_columns
        self.max_distinct = max_distinct
        self.columns: dict[str, Column] = {name: Column(name) for name in wanted or ()}
        self.columns_capped = False
        self.rows = 0
        self.skipped = 0

    def add_row(self, cells: Iterator[tuple[str, Any]]) -> None:
        self.rows += 1
        for name, raw in cells:
            column = self.columns.get(name)
            if column is None:
                if self.wanted is not None:
                    continue
                if len(self.columns) >= self.max_columns:
                    self.columns_capped = True
                    continue
                column = self.columns[name] = Column(name)
            kind, value = classify(raw, self.csv_text)
            if kind != "null":
                column.add(kind, value, self.max_distinct)

    def summary(self, top: int) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": [c.summary(self.rows, top) for c in self.columns.values()],
            "columns_capped": self.columns_capped,
        }


def classify(raw: Any, csv_text: bool) -> tuple[str, Any]:
    """(kind, value) of a cell; CSV text is read as numbers/booleans when it is one."""
    if raw is None:
        return "null", None
    if isinstance(raw, bool):
        return "boolean", raw
    if isinstance(raw, int):
        return "integer", raw
    if isinstance(raw, float):
        return ("real", raw) if math.isfinite(raw) else ("text", str(raw))
    if isinstance(raw, dict | list):
        return "json", raw
    text = str(raw)
    if csv_text:
        stripped = text.strip()
        if not stripped:
            return "null", None
        if _INT.match(stripped):
            return "integer", int(stripped)
        if _REAL.match(stripped):
            number = float(stripped)
            if math.isfinite(number):
                return "real", number
        lowered = stripped.lower()
        if lowered in {"true", "false"}:
            return "boolean", lowered == "true"
    if _DATE.match(text):
        return "date", text
    if _DATETIME.match(text):
        return "datetime", text
    return "text", text


def _column_type(kinds: set[str]) -> str:
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds <= _NUMERIC:
        return "real"
    if kinds <= _TEMPORAL:
        return "datetime"
    return "mixed"


def _short_key(text: str) -> tuple[str, ...]:
    """A bounded counting key: the text, or its prefix plus a digest."""
    if len(text) <= _KEY_CHARS:
        return (text,)
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return (text[:_KEY_CHARS] + "…", digest)
