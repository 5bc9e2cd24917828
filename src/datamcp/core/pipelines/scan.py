"""The first stages of a run inside the source's scan: when the source can
give a DuckDB relation (a CSV file), the plan's first chain runs as part of
that one query (no Arrow round trip per chunk, the reader converts only the
columns used). Its output streams to the destination in Arrow chunks, or,
when a barrier (aggregate, sort) follows, is kept in a DuckDB table (spilled
past the memory limit) from which the counters, the rejects and the
barrier's input are read."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import duckdb
import pyarrow as pa
from duckdb import FunctionExpression, StarExpression

from datamcp.core.pipelines.exprc import C
from datamcp.core.pipelines.model import StageCounters
from datamcp.core.pipelines.plan import AT, RID, WHY, Barrier, Chain, RejectSink

InThread = Callable[..., Awaitable[Any]]


async def scan(
    segments: list[Chain | Barrier],
    source: Any,
    names: Mapping[str, str],
    sink: RejectSink,
    source_counters: StageCounters,
    *,
    in_thread: InThread,
    write: Callable[[list[pa.Table]], Awaitable[None]],
    progress: Callable[[], Awaitable[None]],
    chunk_rows: int,
) -> None:
    """Runs ``segments[0]`` (a chain) inside the source's scan; feeds
    ``segments[1]`` when it is a barrier, else writes what comes out."""
    with _file_errors(source):
        first = segments[0]
        assert isinstance(first, Chain)
        con = first.con
        rid = FunctionExpression("row_number").over()
        rel = source.relation(con, names).select(StarExpression(), rid.alias(RID))
        rel = first.apply(first.start(rel))
        if len(segments) > 1:
            assert isinstance(segments[1], Barrier)
            await in_thread(rel.create, "__scan")
            table = con.table("__scan")
            total, alive = await in_thread(_account, first, table, sink)
            source_counters.read += total
            source_counters.written += total
            await in_thread(segments[1].push_relation, table.filter(C(AT).isnull()), alive)
        else:
            reader = await in_thread(rel.to_arrow_reader, chunk_rows)
            while (batch := await in_thread(_next, reader)) is not None:
                out = pa.Table.from_batches([batch])
                source_counters.read += out.num_rows
                source_counters.written += out.num_rows
                await write([first.account(out, sink)])
                await progress()
        for raw, reason, number in await in_thread(source.scan_rejects):
            source_counters.read += 1
            row = raw if isinstance(raw, dict) else dict(zip(names, raw, strict=False))
            sink.add(source_counters, reason, row, number)


@contextlib.contextmanager
def _file_errors(source: Any) -> Iterator[None]:
    """Reader failures (the file, not the plan) as the source's run error."""
    try:
        yield
    except duckdb.InvalidInputException as exc:
        raise source.scan_error(exc) from None
    except OSError as exc:  # the same, through Arrow's stream reader
        if "CSV" not in str(exc):
            raise
        raise source.scan_error(exc) from None


def _next(reader: Any) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _account(chain: Chain, table: duckdb.DuckDBPyRelation, sink: RejectSink) -> tuple[int, int]:
    """Counters and rejects of the rows kept in ``table``: (rows, rows alive)."""
    flags = table.select(C(AT), C(WHY).isnotnull().alias("__rj"))
    groups = flags.aggregate(
        [C(AT), C("__rj"), FunctionExpression("count_star").alias("__n")], group_expr="__at, __rj"
    ).fetchall()
    stopped = {k: 0 for k in range(len(chain.stages))}
    rejected = {k: 0 for k in range(len(chain.stages))}
    total = 0
    for at, rj, n in groups:
        total += n
        if at is not None:
            stopped[at] += n
            if rj:
                rejected[at] += n
    count = total
    for k, info in enumerate(chain.stages):
        info.counters.read += count
        count -= stopped[k]
        info.counters.written += count
    if any(rejected.values()):
        rows = table.filter(C(WHY).isnotnull()).limit(max(0, sink.room())).to_arrow_table()
        for row in rows.to_pylist():
            info = chain.stages[row[AT]]
            values = {c: row[p] for c in info.before.cols if (p := info.before.phys[c]) in row}
            sink.add(info.counters, row[WHY], values)
            rejected[row[AT]] -= 1
        for k, n in rejected.items():
            if n:
                sink.count(chain.stages[k].counters, n)
    return total, count
