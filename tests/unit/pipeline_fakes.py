"""In-memory sources and destinations for engine tests: rows in, rows out,
through the real engine (DuckDB), no files."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

import datamcp.adapters.pipelines  # noqa: F401 - registers the source and destination kinds
from datamcp.core.errors import FieldViolation
from datamcp.core.pipelines.engine import Engine, Progress
from datamcp.core.pipelines.frame import RowBatches
from datamcp.core.pipelines.model import Part, PipelineSpec, Reject
from datamcp.core.pipelines.ports import ReadContext, SourceBatch, WriteResult
from datamcp.core.pipelines.spec import parse_spec


class RowsSource:
    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], size: int) -> None:
        self.columns, self.rows, self.size = list(columns), [list(r) for r in rows], size
        self.batches = RowBatches(self.columns)

    async def open(self) -> list[str]:
        return list(self.columns)

    async def read(self, size: int) -> SourceBatch | None:
        if not self.rows:
            return None
        take, self.rows = self.rows[: self.size], self.rows[self.size :]
        table, rejects = self.batches.table(take, [])
        return SourceBatch(table, rejects)

    async def close(self) -> None:
        return None


class Collect:
    def __init__(self) -> None:
        self.columns: list[str] = []
        self.kinds: list[str] = []
        self.rows: list[list[Any]] = []
        self.committed = False

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        self.columns, self.kinds = list(columns), list(types)

    async def write(self, table: pa.Table) -> WriteResult:
        self.rows += [list(r.values()) for r in table.to_pylist()]
        return WriteResult(table.num_rows)

    async def commit(self) -> None:
        self.committed = True

    async def abort(self) -> None:
        return None


class Connectors:
    def __init__(self, sources: dict[str, RowsSource]) -> None:
        self.sources = sources
        self.out = Collect()

    def check(self, spec: PipelineSpec) -> list[FieldViolation]:
        return []

    def source(self, part: Part, ctx: ReadContext, path: str = "source") -> RowsSource:
        return self.sources[part.options["path"]]

    def destination(self, part: Part, run_id: str) -> Collect:
        return self.out


def run(
    transforms: list[Any],
    columns: list[str],
    rows: list[list[Any]],
    *,
    lookups: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
    params: dict[str, Any] | None = None,
    size: int = 2,
    **engine: Any,
) -> tuple[Collect, list[Reject], Progress]:
    """Runs ``transforms`` over ``rows`` (read ``size`` at a time)."""
    sources = {"in": RowsSource(columns, rows, size)}
    for name, (cols, data) in (lookups or {}).items():
        sources[name] = RowsSource(cols, data, size)
    connectors = Connectors(sources)
    spec = parse_spec(
        {"source": {"csv": "in"}, "transforms": transforms, "destination": {"jsonl": "out"}}
    )
    rejects: list[Reject] = []
    final: list[Progress] = []

    async def progress(p: Progress) -> None:
        rejects.extend(p.rejects)
        final.append(p)

    eng = Engine(connectors, batch_size=size, chunk_rows=size, threads=1, **engine)  # type: ignore[arg-type]
    asyncio.run(eng.execute(spec, ReadContext("t", params or {}), "r1", progress))
    return connectors.out, rejects, final[-1]
