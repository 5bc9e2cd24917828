"""Incremental loads: rows whose ``incremental.column`` is not past the
stored cursor are skipped at the source (numbers compare as numbers,
anything else as text); the largest value seen becomes the next cursor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import StarExpression

from datamcp.core.pipelines.exprc import C, K
from datamcp.core.pipelines.plan import Layout
from datamcp.core.pipelines.ports import PermanentError, ReadContext


class Cursor:
    """The cursor of one run: ``skip`` filters a batch and tracks the largest value."""

    def __init__(self, ctx: ReadContext, columns: Sequence[str], layout: Layout) -> None:
        self.column = ctx.cursor_column
        self.start = ctx.cursor
        self.max_value: Any = ctx.cursor
        self.numeric: bool | None = None
        if self.start is not None:
            self.numeric = isinstance(self.start, int | float) and not isinstance(self.start, bool)
        if self.column and self.column not in columns:
            raise PermanentError(
                f"incremental.column {self.column!r} is not a source column "
                f"(columns: {', '.join(columns)})",
                "INVALID_PIPELINE",
            )
        self.phys = layout.phys.get(self.column, "")

    def skip(self, con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
        if not self.column or table.num_rows == 0:
            return table
        rel = con.from_arrow(table)
        col = C(self.phys)
        if self.numeric is None:
            text = col.cast(duckdb.sqltypes.VARCHAR)
            bad = rel.filter(
                col.isnotnull() & (text != K("")) & col.try_cast(duckdb.sqltypes.DOUBLE).isnull()
            )
            self.numeric = not bad.limit(1).fetchall()
        key = (
            col.try_cast(duckdb.sqltypes.DOUBLE)
            if self.numeric
            else col.cast(duckdb.sqltypes.VARCHAR)
        )
        rel = rel.select(StarExpression(), key.alias("__ck"))
        if self.start is not None:
            start = float(self.start) if self.numeric else str(self.start)
            rel = rel.filter(C("__ck") > K(start))
        out = rel.to_arrow_table()
        top = pc.max(out.column("__ck")).as_py()
        if top is not None and (self.max_value is None or _gt(top, self.max_value, self.numeric)):
            self.max_value = top
        return out.drop_columns(["__ck"])


def _gt(a: Any, b: Any, numeric: bool | None) -> bool:
    if numeric:
        try:
            return float(a) > float(b)
        except (TypeError, ValueError):
            return True
    return str(a) > str(b)
