"""The batch engine: source -> stages -> destination, one batch at a time.

Memory is bounded by the batch size (plus what blocking stages hold: groups
of an aggregate, a sort's in-memory run before it spills, dedupe keys,
lookup tables). CPU-bound stage work runs in a worker thread so the event
loop keeps serving calls; connectors do their own I/O off the loop. The
destination commits only after the last batch, so a failed, cancelled or
killed run leaves it as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from datamcp.core.errors import InvalidArgument
from datamcp.core.pipelines.model import Reject, StageCounters
from datamcp.core.pipelines.ports import (
    Connectors,
    Destination,
    PermanentError,
    ReadContext,
    SourceBatch,
    WriteResult,
)
from datamcp.core.pipelines.rows import Batch, RejectSink, StageError, infer_types
from datamcp.core.pipelines.spec import Part, PipelineSpec
from datamcp.core.pipelines.transforms import LookupData, Runner, Stage, compile_stages, fuse


@dataclass(slots=True)
class Progress:
    stages: list[StageCounters]
    rejects: list[Reject]
    final: bool = False

    @property
    def read(self) -> int:
        return self.stages[0].read

    @property
    def written(self) -> int:
        return self.stages[-1].written

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.stages)


@dataclass(frozen=True, slots=True)
class Outcome:
    stages: list[StageCounters]
    cursor: Any


_GC_RUNS = 0
_GC_SAVED: tuple[int, int, int] = (700, 10, 10)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the cyclic GC thresholds while runs are going (restored when the
    last one ends): batches of row lists are many young tracked objects that
    hold no cycles, and the default thresholds rescan them over and over."""
    global _GC_RUNS, _GC_SAVED  # noqa: PLW0603 - process-wide GC setting
    if _GC_RUNS == 0:
        _GC_SAVED = gc.get_threshold()
        gc.set_threshold(max(_GC_SAVED[0], 50_000), _GC_SAVED[1], max(_GC_SAVED[2], 100))
    _GC_RUNS += 1
    try:
        yield
    finally:
        _GC_RUNS -= 1
        if _GC_RUNS == 0:
            gc.set_threshold(*_GC_SAVED)


ProgressFn = Callable[[Progress], Awaitable[None]]


class RejectLimit(Exception):
    pass


def _cursor_key(cursor: Any) -> Callable[[Any], Any] | None:
    """How to compare source values with the stored cursor: numbers as
    numbers (CSV gives text), anything else as text."""
    if cursor is None:
        return None
    if isinstance(cursor, int | float) and not isinstance(cursor, bool):

        def num(v: Any) -> Any:
            if v is None or v == "":
                return None
            try:
                return float(v)
            except (TypeError, ValueError):
                return None

        return num
    return lambda v: None if v is None else str(v)


class Engine:
    """Runs one pipeline attempt. Share one per service; it holds no run state."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        batch_size: int = 10_000,
        rejects_kept: int = 1000,
        max_lookup_rows: int = 1_000_000,
        progress_every: float = 1.0,
        offload_rows: int = 2000,
        chunk_rows: int = 1000,
    ) -> None:
        self.chunk_rows = chunk_rows
        self.connectors = connectors
        self.batch_size = batch_size
        self.rejects_kept = rejects_kept
        self.max_lookup_rows = max_lookup_rows
        self.progress_every = progress_every
        self.offload_rows = offload_rows

    async def load_lookups(self, spec: PipelineSpec, ctx: ReadContext) -> dict[int, LookupData]:
        out: dict[int, LookupData] = {}
        plain = ReadContext(ctx.tenant, ctx.params)
        for n, part in enumerate(spec.transforms):
            if part.kind != "lookup":
                continue
            kind, options = next(iter(part.options["source"].items()))
            source = self.connectors.source(
                Part(kind, options), plain, f"transforms[{n}].lookup.source"
            )
            try:
                columns = await source.open()
                rows: Batch = []
                while (batch := await source.read(self.batch_size)) is not None:
                    rows.extend(batch.rows)
                    if len(rows) > self.max_lookup_rows:
                        raise PermanentError(
                            f"transforms[{n}].lookup: more than {self.max_lookup_rows} lookup rows",
                            reason="LOOKUP_TOO_LARGE",
                        )
                out[n] = (columns, rows)
            finally:
                await source.close()
        return out

    async def preview(
        self, spec: PipelineSpec, ctx: ReadContext, limit: int
    ) -> tuple[list[str], Batch, list[Reject]]:
        """The first ``limit`` rows after the transforms (nothing is written).

        Raises:
            InvalidArgument: the transforms do not fit the source's columns.
        """
        lookups = await self.load_lookups(spec, ctx)
        source = self.connectors.source(spec.source, ctx)
        sink = RejectSink(keep=limit)
        try:
            columns = await source.open()
            stages, _ = compile_stages(
                spec.transforms,
                columns,
                params=ctx.params,
                text_columns=source.text_columns,
                lookups=lookups,
            )
            runners = fuse(stages)
            counters = StageCounters("source")
            out: Batch = []
            while len(out) < limit:
                batch = await source.read(min(self.batch_size, 1000))
                if batch is None:
                    break
                self._source_rejects(batch.rejects, columns, counters, sink)
                rows = self._through(runners, batch.rows, sink)
                out.extend(rows)
            else:
                return (stages[-1].columns if stages else columns), out[:limit], sink.kept
            for i, stage in enumerate(stages):
                if stage.blocking:
                    for rows in stage.finish(sink):
                        out.extend(self._through(fuse(stages[i + 1 :]), rows, sink))
            for stage in stages:
                stage.close()
            return (stages[-1].columns if stages else columns), out[:limit], sink.kept
        finally:
            await source.close()

    @staticmethod
    def _source_rejects(
        rejects: Sequence[tuple[list[Any], str, int]],
        columns: Sequence[str],
        counters: StageCounters,
        sink: RejectSink,
    ) -> None:
        for raw, reason, number in rejects:
            counters.read += 1
            sink.add(counters, columns, raw, reason, number)

    @staticmethod
    def _through(runners: Sequence[Runner], rows: Batch, sink: RejectSink) -> Batch:
        for runner in runners:
            if not rows:
                break
            rows = runner.run(rows, sink)
        return rows

    async def execute(
        self,
        spec: PipelineSpec,
        ctx: ReadContext,
        run_id: str,
        on_progress: ProgressFn,
    ) -> Outcome:
        """Run once. Raises what failed (the caller maps it to a run error);
        the destination is aborted on any failure or cancellation."""
        with _fewer_collections():
            return await self._execute(spec, ctx, run_id, on_progress)

    async def _execute(  # noqa: PLR0915 - the run loop reads best in one place
        self,
        spec: PipelineSpec,
        ctx: ReadContext,
        run_id: str,
        on_progress: ProgressFn,
    ) -> Outcome:
        batch_size = spec.batch_size or self.batch_size
        # Rows are read and transformed in chunks of ``chunk_rows``, small
        # enough to stay in the CPU caches between the stages (much faster
        # than 10,000-row passes), and written in batches of ``batch_size``.
        # A source and destination with blocking calls (files, SQLite) run
        # on one worker thread, back on the loop about once per progress
        # interval; after the first batch that destination takes every
        # ``chunk_rows`` rows, while they are still cache-hot.
        sink = RejectSink(keep=self.rejects_kept)
        source_counters = StageCounters("source")
        dest_counters = StageCounters("destination")
        lookups = await self.load_lookups(spec, ctx)
        source = self.connectors.source(spec.source, ctx)
        destination: Destination | None = None
        stages: list[Stage] = []
        write_task: asyncio.Future[WriteResult] | None = None
        step_task: asyncio.Future[Any] | None = None
        stop = threading.Event()
        try:
            columns = await source.open()
            try:
                stages, declared = compile_stages(
                    spec.transforms,
                    columns,
                    params=ctx.params,
                    text_columns=source.text_columns,
                    lookups=lookups,
                )
            except InvalidArgument as exc:
                detail = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
                raise PermanentError(f"{exc.message}: {detail}", "INVALID_PIPELINE") from None
            all_counters = [source_counters, *(s.counters for s in stages), dest_counters]
            runners = fuse(stages)
            out_columns = stages[-1].columns if stages else columns
            cursor_index = -1
            if ctx.cursor_column:
                if ctx.cursor_column not in columns:
                    raise PermanentError(
                        f"incremental.column {ctx.cursor_column!r} is not a source column "
                        f"(columns: {', '.join(columns)})",
                        "INVALID_PIPELINE",
                    )
                cursor_index = columns.index(ctx.cursor_column)
            start_key = _cursor_key(ctx.cursor if ctx.cursor is not None else None)
            cursor_max: Any = ctx.cursor
            max_key: Any = (
                None if start_key is None or ctx.cursor is None else start_key(ctx.cursor)
            )
            last_progress = time.monotonic()
            dest_open = False
            chunk = min(batch_size, self.chunk_rows)
            read_blocking: Callable[[int], SourceBatch | None] | None = getattr(
                source, "read_blocking", None
            )
            write_blocking: Callable[[Batch], WriteResult] | None = None
            pending: Batch = []

            def transform(batch: SourceBatch) -> Batch:
                # On a worker thread (or the loop for small batches), while
                # no other stage work is going on.
                nonlocal max_key, cursor_max
                self._source_rejects(batch.rejects, columns, source_counters, sink)
                rows = batch.rows
                source_counters.read += len(rows)
                if cursor_index >= 0:
                    rows, max_key, cursor_max = _after_cursor(
                        rows, cursor_index, start_key, ctx.cursor, max_key, cursor_max
                    )
                source_counters.written += len(rows)
                if len(rows) <= chunk:
                    return self._through(runners, rows, sink)
                out: Batch = []
                for i in range(0, len(rows), chunk):
                    out.extend(self._through(runners, rows[i : i + chunk], sink))
                return out

            def gather(rows: Batch) -> None:
                nonlocal pending
                if pending:
                    pending.extend(rows)
                else:
                    pending = rows

            def account(rows: Batch, result: WriteResult) -> None:
                dest_counters.read += len(rows)
                dest_counters.written += result.written
                for raw, reason in result.rejects:
                    sink.add(dest_counters, out_columns, raw, reason)

            def work_blocking(until: float) -> bool:
                # The fast path, on one worker thread: read and transform
                # chunk after chunk and (once the destination is open) write
                # each full batch, back to the loop about once per progress
                # interval. True when the source is exhausted.
                nonlocal pending
                assert read_blocking is not None
                # The first batch (``batch_size`` rows, the rows the table's
                # types are inferred from) goes to the loop, which opens the
                # destination; then a destination written on this thread
                # takes every ``chunk_rows`` rows while they are still in
                # the CPU caches (all in the same transaction).
                size = batch_size if write_blocking is None else chunk
                while not stop.is_set():
                    batch = read_blocking(chunk)
                    if batch is None:
                        return True
                    gather(transform(batch))
                    if len(pending) >= size:
                        if write_blocking is None:
                            return False
                        rows, pending = pending, []
                        account(rows, write_blocking(rows))
                    if time.monotonic() >= until or (
                        spec.max_rejects and sink.total > spec.max_rejects
                    ):
                        return False
                return False

            async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
                nonlocal step_task
                step_task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
                try:
                    # Shielded: a cancelled run lets the thread stop at its
                    # next chunk (``finally``) before the source and
                    # destination are closed.
                    result = await asyncio.shield(step_task)
                except asyncio.CancelledError:
                    stop.set()
                    raise
                step_task = None
                return result

            async def write_now(rows: Batch) -> None:
                nonlocal destination, dest_open, write_blocking
                if not dest_open:
                    destination = self.connectors.destination(spec.destination, run_id)
                    await destination.open(out_columns, infer_types(out_columns, rows, declared))
                    dest_open = True
                    write_blocking = getattr(destination, "write_blocking", None)
                assert destination is not None
                if rows:
                    account(rows, await write_async(destination, rows))

            async def write_async(dest: Destination, rows: Batch) -> WriteResult:
                nonlocal write_task
                write_task = asyncio.ensure_future(dest.write(rows))
                # Shielded: on cancellation the worker thread still uses the
                # connection; ``finally`` lets it finish before the abort.
                result = await asyncio.shield(write_task)
                write_task = None
                return result

            async def emit(rows: Batch) -> None:
                # Transformed rows are gathered up to the batch size per write.
                nonlocal pending
                gather(rows)
                if len(pending) >= batch_size:
                    rows, pending = pending, []
                    await write_now(rows)

            async def progress(final: bool = False) -> None:
                nonlocal last_progress
                if spec.max_rejects and sink.total > spec.max_rejects:
                    raise RejectLimit(
                        f"{sink.total} rows rejected, more than max_rejects={spec.max_rejects}"
                    )
                now = time.monotonic()
                if final or now - last_progress >= self.progress_every:
                    last_progress = now
                    await on_progress(Progress(all_counters, sink.take_pending(), final))

            done = False
            while not done:
                if read_blocking is not None:
                    done = await in_thread(work_blocking, last_progress + self.progress_every)
                else:
                    batch = await source.read(batch_size)
                    if batch is None:
                        done = True
                    elif len(batch.rows) >= self.offload_rows:
                        gather(await in_thread(transform, batch))
                    else:
                        gather(transform(batch))
                await emit([])
                await progress()
            for i, stage in enumerate(stages):
                if not stage.blocking:
                    continue
                finished = stage.finish(sink)
                tail = fuse(stages[i + 1 :])
                while True:
                    out = await in_thread(next, finished, None)
                    if out is None:
                        break
                    stage.counters.written += len(out)
                    rows = self._through(tail, out, sink)
                    if rows:
                        await emit(rows)
                    await progress()
            if pending:
                rows, pending = pending, []
                await write_now(rows)
            if not dest_open:
                await write_now([])
            await progress()
            assert destination is not None
            await destination.commit()
            destination = None
            await progress(final=True)
            return Outcome(all_counters, cursor_max)
        except StageError as exc:
            raise PermanentError(str(exc), exc.reason) from None
        finally:
            if step_task is not None and not step_task.done():
                stop.set()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(step_task)
            if write_task is not None and not write_task.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(write_task)
            for stage in stages:
                stage.close()
            if destination is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(destination.abort())
            with contextlib.suppress(Exception):
                await asyncio.shield(source.close())


def _after_cursor(  # noqa: PLR0917
    rows: Batch,
    index: int,
    key: Callable[[Any], Any] | None,
    start: Any,
    max_key: Any,
    max_value: Any,
) -> tuple[Batch, Any, Any]:
    """Rows past the start cursor, and the largest cursor value seen."""
    if key is None:
        # First run without an initial cursor: every row; the cursor's type
        # comes from the values (numbers when they all parse as numbers).
        key = _cursor_key(0)
        assert key is not None
        numeric = all(key(r[index]) is not None for r in rows if r[index] not in (None, ""))
        if not numeric:
            key = _cursor_key("")
            assert key is not None
        out = rows
    else:
        start_key = key(start)
        out = []
        for r in rows:
            k = key(r[index])
            if k is not None and k > start_key:
                out.append(r)
    for r in out:
        k = key(r[index])
        if k is not None and (max_key is None or _gt(k, max_key)):
            max_key = k
            max_value = k
    return out, max_key, max_value


def _gt(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:
        return str(a) > str(b)
