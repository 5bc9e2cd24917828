"""The batch engine: source -> plan (DuckDB over Arrow) -> destination.

A run reads its source in chunks of Arrow rows (``chunk_rows``), pushes each
through the plan's chains (row-wise stages, one DuckDB relation per chunk)
and barriers (aggregate, sort: a DuckDB table, spilled to disk past
``memory_limit``), and writes what comes out. Memory is bounded by the chunk
size plus DuckDB's memory limit, whatever the input size. The destination
commits only after the last chunk, so a failed, cancelled or killed run
leaves it as it was. DuckDB work runs in a worker thread (it releases the
GIL), one hop per chunk, so the event loop keeps serving calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from datamcp.core.errors import InvalidArgument
from datamcp.core.pipelines.frame import kind_of
from datamcp.core.pipelines.incremental import Cursor
from datamcp.core.pipelines.model import PipelineSpec, Reject, StageCounters
from datamcp.core.pipelines.plan import RID, Barrier, Chain, Layout, PlanBuilder, RejectSink
from datamcp.core.pipelines.ports import (
    Connectors,
    Destination,
    Outcome,
    PermanentError,
    Progress,
    ProgressFn,
    ReadContext,
    RejectLimit,
    Source,
    SourceBatch,
)
from datamcp.core.pipelines.scan import scan
from datamcp.core.pipelines.transforms import REGISTRY, lookup


@dataclass(slots=True)
class _Plan:
    segments: list[Chain | Barrier]
    layout: Layout
    counters: list[StageCounters]


class Engine:
    """Runs one pipeline attempt. Share one per service; it holds no run state.

    Args:
        memory_limit: DuckDB's memory limit per run (``"1GB"``, ``"512MB"``);
            sorts, aggregates and dedupe state past it spill to disk.
        threads: DuckDB threads per run (0: one per core).
        chunk_rows: rows per chunk read from file sources (and the largest
            batch written at once).
    """

    def __init__(
        self,
        connectors: Connectors,
        *,
        batch_size: int = 10_000,
        rejects_kept: int = 1000,
        max_lookup_rows: int = 1_000_000,
        progress_every: float = 1.0,
        chunk_rows: int = 100_000,
        memory_limit: str = "512MB",
        threads: int = 0,
    ) -> None:
        self.connectors = connectors
        self.batch_size = batch_size
        self.rejects_kept = rejects_kept
        self.max_lookup_rows = max_lookup_rows
        self.progress_every = progress_every
        self.chunk_rows = chunk_rows
        self.memory_limit = memory_limit
        self.threads = threads

    # ---- plumbing ---------------------------------------------------------------------

    def connect(self, temp: str) -> duckdb.DuckDBPyConnection:
        config: dict[str, Any] = {
            "memory_limit": self.memory_limit,
            "temp_directory": temp,
            "preserve_insertion_order": True,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
        if self.threads:
            config["threads"] = self.threads
        return duckdb.connect(":memory:", config=config)

    def read_size(self, spec: PipelineSpec, source: Source) -> int:
        if getattr(source, "columnar", False):
            return self.chunk_rows
        return spec.batch_size or self.batch_size

    async def load_lookups(
        self, spec: PipelineSpec, ctx: ReadContext, con: duckdb.DuckDBPyConnection
    ) -> dict[int, tuple[str, Layout]]:
        """Each lookup transform's source in a DuckDB table, by its index."""
        return await lookup.load(
            spec, ctx, con, self.connectors, batch_size=self.batch_size, limit=self.max_lookup_rows
        )

    def plan(
        self,
        spec: PipelineSpec,
        con: duckdb.DuckDBPyConnection,
        layout: Layout,
        params: dict[str, Any],
        lookups: dict[int, tuple[str, Layout]],
    ) -> _Plan:
        """Raises InvalidArgument: the transforms do not fit the columns."""
        b = PlanBuilder(con, layout, params, lookups)
        counters: list[StageCounters] = []
        for n, part in enumerate(spec.transforms):
            b.index = n
            before = len(b.problems)
            REGISTRY[part.kind].build(b, part.options, f"transforms[{n}].{part.kind}")
            if len(b.problems) > before:
                continue
        if b.problems:
            raise InvalidArgument(
                f"the transforms do not fit the source's columns ({len(b.problems)} problem(s))",
                b.problems,
                reason="INVALID_PIPELINE",
            )
        for seg in b.segments:
            if isinstance(seg, Chain):
                counters += [s.counters for s in seg.stages]
            elif seg.counted:
                counters.append(seg.counters)
        return _Plan(b.segments, b.layout, counters)

    @staticmethod
    def _in_scan(plan: _Plan, source: Source, ctx: ReadContext) -> bool:
        """Whether the first chain runs inside the source's scan: a source
        that gives a relation, no cursor, and no stage that joins or numbers
        rows (those stay chunked: their state is a spillable table, while a
        window over the whole input is held in memory)."""
        first = plan.segments[0]
        return (
            hasattr(source, "relation")
            and not ctx.cursor_column
            and isinstance(first, Chain)
            and not first.windowed
        )

    # ---- one chunk through the plan ----------------------------------------------------

    @staticmethod
    def _push(
        plan: _Plan, start: int, table: pa.Table, sink: RejectSink, rid: list[int]
    ) -> list[pa.Table]:
        if RID not in table.column_names:
            table = table.append_column(
                RID, pa.array(range(rid[0], rid[0] + table.num_rows), pa.int64())
            )
            rid[0] += table.num_rows
        for seg in plan.segments[start:]:
            if table.num_rows == 0:
                return []
            if isinstance(seg, Chain):
                table = seg.run(table, sink)
            else:
                seg.push(table)
                return []
        return [table] if table.num_rows else []

    def _finish(self, plan: _Plan, sink: RejectSink, rid: list[int]) -> list[pa.Table]:
        out: list[pa.Table] = []
        for i, seg in enumerate(plan.segments):
            if isinstance(seg, Barrier):
                for table in seg.finish(self.chunk_rows):
                    fresh = table.drop_columns([RID]) if RID in table.column_names else table
                    out += self._push(plan, i + 1, fresh, sink, rid)
        return out

    @staticmethod
    def _output(plan: _Plan, table: pa.Table) -> pa.Table:
        lay = plan.layout
        return table.select([lay.phys[c] for c in lay.cols]).rename_columns(lay.cols)

    # ---- preview ------------------------------------------------------------------------

    async def preview(
        self, spec: PipelineSpec, ctx: ReadContext, limit: int
    ) -> tuple[list[str], list[list[Any]], list[Reject]]:
        """The first ``limit`` rows after the transforms (nothing is written).

        Raises:
            InvalidArgument: the transforms do not fit the source's columns.
        """
        temp = tempfile.mkdtemp(prefix="datamcp-run-")
        con = self.connect(temp)
        source = self.connectors.source(spec.source, ctx)
        sink = RejectSink(keep=limit)
        try:
            lookups = await self.load_lookups(spec, ctx, con)
            columns = await source.open()
            first = await source.read(min(self.read_size(spec, source), 10_000))
            layout = _layout(columns, first)
            plan = await asyncio.to_thread(self.plan, spec, con, layout, dict(ctx.params), lookups)
            rid = [0]
            rows: list[list[Any]] = []
            batch = first
            while batch is not None and len(rows) < limit:
                for raw, reason, number in batch.rejects:
                    sink.add(StageCounters("source"), reason, _raw_row(columns, raw), number)
                outs = await asyncio.to_thread(
                    self._push, plan, 0, _physical(batch.table, layout), sink, rid
                )
                rows += _rows(plan, outs, self)
                batch = None if len(rows) >= limit else await source.read(10_000)
            if len(rows) < limit:
                rows += _rows(plan, await asyncio.to_thread(self._finish, plan, sink, rid), self)
            return list(plan.layout.cols), rows[:limit], sink.take()
        finally:
            with contextlib.suppress(Exception):
                await source.close()
            con.close()
            shutil.rmtree(temp, ignore_errors=True)

    # ---- a run ------------------------------------------------------------------------

    async def execute(  # noqa: PLR0915 - the run loop reads best in one place
        self, spec: PipelineSpec, ctx: ReadContext, run_id: str, on_progress: ProgressFn
    ) -> Outcome:
        """Run once. Raises what failed (the caller maps it to a run error);
        the destination is aborted on any failure or cancellation."""
        temp = tempfile.mkdtemp(prefix="datamcp-run-")
        con = self.connect(temp)
        sink = RejectSink(keep=self.rejects_kept)
        source_counters = StageCounters("source")
        dest_counters = StageCounters("destination")
        source = self.connectors.source(spec.source, ctx)
        destination: Destination | None = None
        step: asyncio.Future[Any] | None = None
        counters = [source_counters, dest_counters]
        last = time.monotonic()

        async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
            nonlocal step
            step = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                result = await asyncio.shield(step)
            except asyncio.CancelledError:
                con.interrupt()
                raise
            step = None
            return result

        async def progress(final: bool = False) -> None:
            nonlocal last
            if spec.max_rejects and sink.total > spec.max_rejects:
                raise RejectLimit(
                    f"{sink.total} rows rejected, more than max_rejects={spec.max_rejects}"
                )
            now = time.monotonic()
            if final or now - last >= self.progress_every:
                last = now
                await on_progress(Progress(counters, sink.take(), final))

        try:
            lookups = await self.load_lookups(spec, ctx, con)
            columns = await source.open()
            size = self.read_size(spec, source)
            known: dict[str, str] | None = getattr(source, "kinds", None)
            batch = None if known is not None else await source.read(size)
            layout = _layout(columns, batch, known)
            try:
                plan = await in_thread(self.plan, spec, con, layout, dict(ctx.params), lookups)
            except InvalidArgument as exc:
                detail = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
                raise PermanentError(f"{exc.message}: {detail}", "INVALID_PIPELINE") from None
            if known is not None:
                # Types known before reading (CSV: text): read only what the
                # plan uses (the reader skips converting the other fields).
                used = _used(plan)
                keep = [c for c in columns if layout.phys[c] in used or c == ctx.cursor_column]
                source.narrow(keep)  # type: ignore[attr-defined]
                if not self._in_scan(plan, source, ctx):
                    batch = await source.read(size)
            counters = [source_counters, *plan.counters, dest_counters]
            cursor = Cursor(ctx, columns, layout)
            destination = self.connectors.destination(spec.destination, run_id)
            kinds = [plan.layout.kinds[c] for c in plan.layout.cols]
            await destination.open(list(plan.layout.cols), kinds)
            rid = [0]

            async def write(outs: list[pa.Table]) -> None:
                assert destination is not None
                for out in outs:
                    table = self._output(plan, out)
                    dest_counters.read += table.num_rows
                    result = await destination.write(table)
                    dest_counters.written += result.written
                    for row, reason in result.rejects:
                        sink.add(dest_counters, reason, row)

            if self._in_scan(plan, source, ctx):
                await source.close()  # its own reader is not needed: the scan runs here
                await scan(
                    plan.segments,
                    source,
                    {c: layout.phys[c] for c in keep},
                    sink,
                    source_counters,
                    in_thread=in_thread,
                    write=write,
                    progress=progress,
                    chunk_rows=self.chunk_rows,
                )
                batch = None
            while batch is not None:
                for raw, reason, number in batch.rejects:
                    source_counters.read += 1
                    sink.add(source_counters, reason, _raw_row(columns, raw), number)
                table = _physical(batch.table, layout)
                source_counters.read += table.num_rows
                table = await in_thread(cursor.skip, con, table)
                source_counters.written += table.num_rows
                await write(await in_thread(self._push, plan, 0, table, sink, rid))
                await progress()
                batch = await source.read(size)
            await write(await in_thread(self._finish, plan, sink, rid))
            await progress()
            await destination.commit()
            destination = None
            await progress(final=True)
            return Outcome(counters, cursor.max_value)
        except duckdb.InterruptException:
            raise asyncio.CancelledError from None
        except duckdb.OutOfMemoryException as exc:
            raise PermanentError(
                f"the run needs more than pipelines.memory_limit ({self.memory_limit}): "
                f"{str(exc).splitlines()[0][:200]}",
                "OUT_OF_MEMORY",
            ) from None
        finally:
            if step is not None and not step.done():
                con.interrupt()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(step)
            if destination is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(destination.abort())
            with contextlib.suppress(Exception):
                await asyncio.shield(source.close())
            con.close()
            shutil.rmtree(temp, ignore_errors=True)


# ---- helpers ------------------------------------------------------------------------------


def _used(plan: _Plan) -> set[str]:
    """Physical columns the plan reads or writes out."""
    used = {plan.layout.phys[c] for c in plan.layout.cols}
    for seg in plan.segments:
        used |= seg.uses if isinstance(seg, Chain) else set(seg.columns)
    return used


def _layout(
    columns: Sequence[str], first: SourceBatch | None, known: dict[str, str] | None = None
) -> Layout:
    kinds = dict(known) if known else {c: "string" for c in columns}
    if first is not None:
        schema = first.table.schema
        for c in columns:
            if c in schema.names:
                kinds[c] = kind_of(schema.field(c))
    return Layout(list(columns), {c: f"_{i}" for i, c in enumerate(columns)}, kinds)


def _physical(table: pa.Table, layout: Layout) -> pa.Table:
    cols = [c for c in layout.cols if c in table.column_names]
    return table.select(cols).rename_columns([layout.phys[c] for c in cols])


def _raw_row(columns: Sequence[str], raw: Any) -> dict[str, Any]:
    from datamcp.core.pipelines.frame import json_safe

    if isinstance(raw, dict):
        return {str(k): json_safe(v) for k, v in raw.items()}
    values = list(raw)
    out = {c: json_safe(v) for c, v in zip(columns, values, strict=False)}
    if len(values) > len(columns):
        out["_extra"] = [json_safe(v) for v in values[len(columns) :]]
    return out


def _rows(plan: _Plan, tables: list[pa.Table], engine: Engine) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for t in tables:
        out = engine._output(plan, t)
        rows += [list(r.values()) for r in out.to_pylist()]
    return rows
