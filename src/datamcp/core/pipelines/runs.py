"""Running pipelines: the run lifecycle, retries, timeouts, cancellation,
persistence and ``pipeline.run.*`` events.

Every state change commits through the event bus writer together with the
event announcing it (a transactional outbox, as tasks do): a run's row and
its events never disagree. On success the incremental cursor is stored in
that same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import FailedPrecondition, NotFound, error_id
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Event
from datamcp.core.pipelines.model import (
    Pipeline,
    Run,
    RunError,
    RunPolicy,
    RunState,
    run_event,
    snapshot,
    start_cursor,
)
from datamcp.core.pipelines.ports import (
    PermanentError,
    Progress,
    ReadContext,
    RejectLimit,
    TransientError,
)
from datamcp.core.pipelines.run_store import CURSOR, INSERT, REJECTS, SAVE, orphaned_runs
from datamcp.core.ports import UnitOfWorkFactory, Write
from datamcp.core.resilience import RetryPolicy
from datamcp.core.signals import KeyedWaiters

if TYPE_CHECKING:
    from datamcp.core.pipelines.engine import Engine

log = logging.getLogger(__name__)

#: Between store reads of a run another replica runs: its "runs" signals
#: wake the watcher; the poll is the fallback (faster while signals are down).
WATCH_POLL, WATCH_POLL_UNSIGNALLED = 5.0, 0.5


@dataclass(slots=True)
class _Live:
    run: Run
    pipeline: Pipeline
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    progress_count: int = 0

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class RunManager:
    """Starts, tracks and finishes runs on this instance."""

    def __init__(
        self,
        bus: EventBus,
        uow: UnitOfWorkFactory,
        engine: Callable[[], Engine],
        instance_id: str,
        policy: RunPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._uow = uow
        self._make_engine = engine
        self._engine: Engine | None = None
        self.instance_id = instance_id
        self.policy = policy
        self._clock = clock
        self._live: dict[str, _Live] = {}
        self._slots = asyncio.Semaphore(policy.max_concurrent_runs)
        self._recovery: asyncio.Task[None] | None = None
        self._changes = KeyedWaiters(bus.signals, "runs")
        self.started = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.rows_written = 0

    @property
    def engine(self) -> Engine:
        """The engine, made on first use: its libraries (DuckDB, Arrow) are
        imported then, so a package without them (the Lambda zip) parses,
        stores and lists pipelines, and only running one needs them.

        Raises:
            FailedPrecondition: reason ``PIPELINE_ENGINE_MISSING`` when this
                deployment does not include them.
        """
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def can_run(self) -> bool:
        """Whether this deployment can run pipelines (see :attr:`engine`)."""
        try:
            self.engine  # noqa: B018
        except FailedPrecondition:
            return False
        return True

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.recover()
        self._recovery = asyncio.create_task(self._recovery_loop(), name="pipeline-recovery")

    async def stop(self) -> None:
        """Stop running runs: they end FAILED (reason SERVER_STOPPED) and leave
        their destinations untouched."""
        await cancel_and_wait(self._recovery)
        self._recovery = None
        lives = list(self._live.values())
        for live in lives:
            if live.task is not None and not live.task.done():
                live.task.cancel("stopping")
        await asyncio.gather(*(lv.task for lv in lives if lv.task), return_exceptions=True)

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.recovery_interval)
            try:
                await self.recover()
            except Exception:
                log.warning("pipeline run recovery failed", exc_info=True)

    async def recover(self) -> int:
        """Fail the unfinished runs of processes that are gone (a SIGKILL, a
        crash): their destinations were never committed."""
        runs = await orphaned_runs(
            self._uow, self.instance_id, self._clock(), self.policy.stale_after
        )
        for run in runs:
            run.owner = self.instance_id
            error = RunError("PROCESS_DIED", "the server running this run stopped unexpectedly")
            await self._finish(run, RunState.FAILED, error)
        return len(runs)

    # ---- starting ----------------------------------------------------------------------

    async def submit(
        self,
        pipeline: Pipeline,
        *,
        params: dict[str, Any],
        trigger: str,
        request_id: str,
        correlation_id: str,
        run_id: str,
    ) -> tuple[Run, bool]:
        """Store a PENDING run and start it here.

        Raises:
            FailedPrecondition: reason ``PIPELINE_BUSY`` when the pipeline already
                has an unfinished run, ``PIPELINE_ENGINE_MISSING`` when this
                deployment cannot run pipelines.
        """
        self.engine  # noqa: B018 - refuse before anything is stored
        async with self._uow() as tx:
            existing = await tx.pipelines.get_run(pipeline.tenant, run_id)
        if existing is not None:
            return self._fresher(existing), True
        now = self._clock()
        run = Run(
            id=run_id,
            tenant=pipeline.tenant,
            pipeline_id=pipeline.id,
            pipeline_name=pipeline.name,
            pipeline_version=pipeline.version,
            state=RunState.PENDING,
            trigger=trigger,
            params=params,
            request_id=request_id,
            correlation_id=correlation_id or run_id,
            created_at=now,
            updated_at=now,
            cursor_start=pipeline.cursor,
            owner=self.instance_id,
        )
        await self._bus.publish([], [Write(INSERT, run)])
        async with self._uow() as tx:
            stored = await tx.pipelines.get_run(pipeline.tenant, run_id)
            if stored is None:
                busy = await tx.pipelines.active_runs(pipeline.tenant, pipeline.id)
        if stored is None:
            raise FailedPrecondition(
                f"pipeline {pipeline.name} already has {busy or 'an'} unfinished run; "
                "wait for it (WatchRun) or cancel it (CancelRun)",
                reason="PIPELINE_BUSY",
                metadata={"pipeline_id": pipeline.id},
            )
        if stored.owner != self.instance_id or stored.created_at != now:
            return self._fresher(stored), True
        live = _Live(run, pipeline)
        self._live[run.id] = live
        live.task = asyncio.create_task(self._execute(live), name=f"pipeline-run:{run.id}")
        return run, False

    def _fresher(self, run: Run) -> Run:
        live = self._live.get(run.id)
        return live.run if live is not None else run

    # ---- running -----------------------------------------------------------------------

    async def _execute(self, live: _Live) -> None:
        run, pipeline = live.run, live.pipeline
        spec = pipeline.spec
        retry = RetryPolicy(
            max_attempts=self.policy.max_retries + 1,
            base_delay=self.policy.retry_base_delay,
            max_delay=self.policy.retry_max_delay,
        )
        timeout = spec.timeout or self.policy.run_timeout
        state, error, cursor = RunState.FAILED, None, None
        try:
            async with self._slots:
                deadline = time.monotonic() + timeout
                while True:
                    run.attempts += 1
                    run.state = RunState.RUNNING
                    run.started_at = run.started_at or self._clock()
                    await self._record(live, "pipeline.run.started" if run.attempts == 1 else None)
                    ctx = ReadContext(
                        run.tenant,
                        {**spec.params, **run.params},
                        str(spec.incremental["column"]) if spec.incremental else "",
                        start_cursor(pipeline),
                    )
                    try:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        async with asyncio.timeout(left):
                            outcome = await self.engine.execute(
                                spec, ctx, run.id, lambda p: self._on_progress(live, p)
                            )
                    except TransientError as exc:
                        if retry.exhausted(run.attempts) or time.monotonic() >= deadline:
                            error = RunError("TRANSIENT_ERROR", _describe(exc, run.attempts))
                            break
                        log.info(
                            "pipeline run attempt failed; retrying",
                            extra={"run_id": run.id, "attempt": run.attempts, "error": str(exc)},
                        )
                        await self._reset_attempt(live)
                        await asyncio.sleep(retry.delay(run.attempts))
                        continue
                    state = RunState.SUCCEEDED
                    cursor = outcome.cursor if spec.incremental else None
                    break
        except PermanentError as exc:
            error = RunError(exc.reason, str(exc))
        except RejectLimit as exc:
            error = RunError("TOO_MANY_REJECTS", str(exc))
        except TimeoutError:
            error = RunError("TIMEOUT", f"the run took longer than {timeout:g}s")
        except asyncio.CancelledError:
            if run.cancel_requested:
                state, error = RunState.CANCELLED, RunError("CANCELLED", "cancelled by request")
            else:
                error = RunError(
                    "SERVER_STOPPED", "the server stopped during the run; run it again"
                )
            await asyncio.shield(self._finish(run, state, error, live=live))
            raise
        except Exception as exc:
            eid = error_id(exc)
            log.error(
                "pipeline run failed", extra={"run_id": run.id, "error_id": eid}, exc_info=exc
            )
            error = RunError("INTERNAL", f"the run failed unexpectedly (error id {eid})")
        await asyncio.shield(self._finish(run, state, error, cursor=cursor, live=live))

    async def _reset_attempt(self, live: _Live) -> None:
        run = live.run
        run.stages, run.rows_read, run.rows_written, run.rows_rejected = [], 0, 0, 0
        async with self._uow() as tx:
            await tx.pipelines.clear_rejects(run.id)
            await tx.commit()

    async def _on_progress(self, live: _Live, progress: Progress) -> None:
        run = live.run
        run.stages = [replace(s) for s in progress.stages]
        run.rows_read = progress.read
        run.rows_written = progress.written
        run.rows_rejected = progress.rejected
        writes: list[Write] = []
        if progress.rejects:
            writes.append(Write(REJECTS, (run, progress.rejects)))
        if not progress.final:
            live.progress_count += 1
            await self._record(live, "pipeline.run.progress", writes)
            if not run.cancel_requested:
                async with self._uow() as tx:
                    if await tx.pipelines.cancel_requested(run.id):
                        run.cancel_requested = True
                if run.cancel_requested:
                    raise asyncio.CancelledError
        elif writes:
            await self._bus.publish([], writes)

    async def _record(
        self, live: _Live, event_type: str | None, extra: Sequence[Write] = ()
    ) -> None:
        run = live.run
        run.updated_at = self._clock()
        events = [self._event(run, event_type, live)] if event_type else []
        await self._bus.publish(events, [*extra, Write(SAVE, snapshot(run))])
        self._bus.signals.send("runs", run.id)
        live.touch()

    async def _finish(
        self,
        run: Run,
        state: RunState,
        error: RunError | None,
        *,
        cursor: Any = None,
        live: _Live | None = None,
    ) -> None:
        now = self._clock()
        run.state = state
        run.error = error
        run.ended_at = now
        run.updated_at = now
        if isinstance(cursor, float) and cursor.is_integer():
            cursor = int(cursor)
        writes = []
        if state is RunState.SUCCEEDED and cursor is not None:
            run.cursor_end = cursor
            writes.append(Write(CURSOR, (run.pipeline_id, cursor)))
        writes.insert(0, Write(SAVE, snapshot(run)))
        event_type = {
            RunState.SUCCEEDED: "pipeline.run.succeeded",
            RunState.FAILED: "pipeline.run.failed",
            RunState.CANCELLED: "pipeline.run.cancelled",
        }[state]
        try:
            await self._bus.publish([self._event(run, event_type, live)], writes)
            self._bus.signals.send("runs", run.id)
        except Exception:
            log.exception("could not record the end of pipeline run", extra={"run_id": run.id})
        if state is RunState.SUCCEEDED:
            self.succeeded += 1
            self.rows_written += run.rows_written
        elif state is RunState.CANCELLED:
            self.cancelled += 1
        else:
            self.failed += 1
        if live is not None:
            self._live.pop(run.id, None)
            live.touch()

    def _event(self, run: Run, event_type: str, live: _Live | None) -> Event:
        return run_event(run, event_type, live.progress_count if live else 0, self._clock())

    # ---- reading, cancelling, watching ---------------------------------------------------

    async def get(self, tenant: str, run_id: str) -> Run:
        live = self._live.get(run_id)
        if live is not None and live.run.tenant == tenant:
            return live.run
        async with self._uow() as tx:
            run = await tx.pipelines.get_run(tenant, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found", reason="RUN_NOT_FOUND")
        return run

    async def cancel(self, tenant: str, run_id: str) -> Run:
        """Cancel a run (here or on another replica).

        Raises:
            NotFound: no such run for this tenant.
            FailedPrecondition: reason ``RUN_FINISHED``.
        """
        run = await self.get(tenant, run_id)
        if run.state.final:
            raise FailedPrecondition(
                f"run {run_id} already finished ({run.state.name})", reason="RUN_FINISHED"
            )
        live = self._live.get(run_id)
        if live is not None and live.task is not None:
            live.run.cancel_requested = True
            live.task.cancel("cancelled")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(live.task)
            return await self.get(tenant, run_id)
        async with self._uow() as tx:
            await tx.pipelines.request_cancel(tenant, run_id)
            await tx.commit()
        # The owner sees the request at its next progress tick.
        async for current in self.watch(tenant, run_id, within=10.0):
            if current.state.final:
                return current
        return await self.get(tenant, run_id)

    async def watch(
        self, tenant: str, run_id: str, within: float | None = None
    ) -> AsyncIterator[Run]:
        """The run now and after each change, until it is final."""
        end = None if within is None else time.monotonic() + within
        last: tuple[Any, ...] | None = None
        # Listening before each read: a change signalled during it is not lost.
        with self._changes.listen(run_id) as elsewhere:
            while True:
                live = self._live.get(run_id)
                changed = live.changed if live is not None else None
                # A snapshot: get() may hand back the live run, which the runner
                # keeps changing (even while this generator is suspended in its
                # yield), so finality is judged on what was sent.
                run = snapshot(await self.get(tenant, run_id))
                key = (
                    run.state,
                    run.updated_at,
                    run.rows_read,
                    run.rows_written,
                    run.rows_rejected,
                )
                if key != last:
                    last = key
                    yield run
                if run.state.final:
                    return
                wait = self._changes.poll_interval(WATCH_POLL, WATCH_POLL_UNSIGNALLED)
                if end is not None:
                    wait = min(wait, end - time.monotonic())
                    if wait <= 0:
                        return
                if changed is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await changed.wait()
                else:  # run by another replica (or not started yet)
                    await elsewhere.wait(wait)

    async def wait(self, tenant: str, run_id: str) -> Run:
        final = None
        async for run in self.watch(tenant, run_id):
            final = run
        assert final is not None
        return final

    @property
    def running(self) -> int:
        return len(self._live)


def _describe(exc: BaseException, attempts: int) -> str:
    notes = "".join(f"; {n}" for n in getattr(exc, "__notes__", []))
    return f"{exc} (after {attempts} attempt(s)){notes}"
