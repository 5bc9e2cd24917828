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

from datamcp.core.pipelines.exprc import C, F
from datamcp.core.pipelines.model import StageCounters
from datamcp.core.pipelines.plan import AT, REJECTED, RID, WHY, Barrier, Chain, N, RejectSink

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
            barrier = segments[1]
            assert isinstance(barrier, Barrier)
            flagged = rel.select(StarExpression(), C(WHY).isnotnull().alias(REJECTED))
            if barrier.grouped is not None:
                # Aggregated in the scan's own pass, grouped by status too:
                # no row is kept, only partials and counts per status.
                keep = flagged.select(*[C(c) for c in [*barrier.columns, AT, REJECTED]])
                await in_thread(barrier.grouped(keep, [AT, REJECTED]).create, "__scan")
            else:
                await in_thread(flagged.create, "__scan")
            table = con.table("__scan")
            count = F("sum", C(N)) if barrier.grouped is not None else F("count_star")
            stats = table.aggregate([C(AT), C(REJECTED), count], group_expr=f"{AT}, {REJECTED}")
            total, alive, rejected = _account(first, await in_thread(stats.fetchall))
            source_counters.read += total
            source_counters.written += total
            await _source_rejects(source, names, sink, source_counters, in_thread)
            if rejected:
                # The rejected rows themselves (when only partials were kept,
                # the scan is read again for the first ones).
                rows = table if barrier.grouped is None else rel
                kept = rows.filter(C(WHY).isnotnull()).limit(max(0, sink.room()))
                found = await in_thread(kept.to_arrow_table) if sink.room() > 0 else None
                _keep(first, found, sink, rejected)
            alive_rel = table.filter(C(AT).isnull())
            if barrier.grouped is not None:
                await in_thread(barrier.adopt, alive_rel, alive)
            else:
                await in_thread(barrier.push_relation, alive_rel, alive)
            return
        reader = await in_thread(rel.to_arrow_reader, chunk_rows)
        while (batch := await in_thread(_next, reader)) is not None:
            out = pa.Table.from_batches([batch])
            source_counters.read += out.num_rows
            source_counters.written += out.num_rows
            await write([first.account(out, sink)])
            await progress()
        await _source_rejects(source, names, sink, source_counters, in_thread)


async def _source_rejects(
    source: Any,
    names: Mapping[str, str],
    sink: RejectSink,
    counters: StageCounters,
    in_thread: InThread,
) -> None:
    for raw, reason, number in await in_thread(source.scan_rejects):
        counters.read += 1
        row = raw if isinstance(raw, dict) else dict(zip(names, raw, strict=False))
        sink.add(counters, reason, row, number)


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


def _account(chain: Chain, groups: list[tuple[Any, ...]]) -> tuple[int, int, dict[int, int]]:
    """Stage counters from the rows per (stopping stage, rejected): (rows,
    rows alive, rejects per stage)."""
    stopped = dict.fromkeys(range(len(chain.stages)), 0)
    rejected: dict[int, int] = {}
    total = 0
    for at, rj, n in groups:
        total += int(n)
        if at is not None:
            stopped[at] += int(n)
            if rj:
                rejected[at] = rejected.get(at, 0) + int(n)
    count = total
    for k, info in enumerate(chain.stages):
        info.counters.read += count
        count -= stopped[k]
        info.counters.written += count
    return total, count, rejected


def _keep(chain: Chain, rows: pa.Table | None, sink: RejectSink, rejected: dict[int, int]) -> None:
    """The first rejected ``rows`` kept with their reasons; all counted."""
    left = dict(rejected)
    for row in rows.to_pylist() if rows is not None else []:
        info = chain.stages[row[AT]]
        values = {c: row[p] for c in info.before.cols if (p := info.before.phys[c]) in row}
        sink.add(info.counters, row[WHY], values)
        left[row[AT]] -= 1
    for k, n in left.items():
        if n:
            sink.count(chain.stages[k].counters, n)
