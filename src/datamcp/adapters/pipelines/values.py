"""Arrow batches as destinations take them: timestamps as ISO 8601 text,
JSON values as JSON text, rows as Python values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def plain(table: pa.Table, kinds: Sequence[str]) -> pa.Table:
    """``table`` with timestamps as ISO 8601 text (UTC, ``+00:00``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for col, kind in zip(table.columns, kinds, strict=True):
        if kind == "timestamp":
            text = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S.%f+00:00")
            columns.append(pc.replace_substring_regex(text, r"\.000000\+", "+"))
        else:
            columns.append(col)
    return pa.Table.from_arrays(columns, names=table.column_names)


def python_rows(table: pa.Table, kinds: Sequence[str]) -> list[list[Any]]:
    """Rows of Python values; JSON columns parsed back to objects."""
    cols = [c.to_pylist() for c in table.columns]
    for i, kind in enumerate(kinds):
        if kind == "json":
            cols[i] = [None if v is None else json.loads(v) for v in cols[i]]
    return [list(r) for r in zip(*cols, strict=True)] if cols else []
