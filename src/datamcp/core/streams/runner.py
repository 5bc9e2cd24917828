"""One running stream job: lease input, apply it to the windows, checkpoint.

Exactly-once results rest on one rule: a step's input is acknowledged in
the same transaction that stores the state it produced. Each step

1. leases a batch of deliveries from the job's durable subscription;
2. applies their records to the in-memory windows (nothing is written yet);
3. commits ONE transaction holding the job row (watermark, counters, lease:
   fenced by ownership), the changed and closed windows, the deletion of the
   consumed deliveries (the acks), the rows for a destination table and the
   result events (ids derived from job, key and window, so a result can never
   be stored twice).

A crash before the commit leaves the deliveries unacknowledged and the old
checkpoint in place: the input comes back and is applied to the state it
was not yet part of. After the commit, the input is gone from the
subscription and its effect is in the checkpoint. Any failure throws the
in-memory state away and resumes from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from datamcp.core.background import wait_at_most
from datamcp.core.errors import DataMCPError
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Delivery, Event, Subscription, new_event
from datamcp.core.events.subscriptions import SubscriptionService
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory
from datamcp.core.resilience import RetryPolicy
from datamcp.core.streams.model import RECORD_LATE, Counters, StreamJob
from datamcp.core.streams.ports import Checkpoint, Fenced, ResultRow
from datamcp.core.streams.records import Prepared, RecordReader, get_path
from datamcp.core.streams.windows import WindowEngine, WindowResult

log = logging.getLogger(__name__)

#: Restarts from the last checkpoint after a failure: 0.5 s doubling to 30 s.
RESTART_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=30.0)


def window_event_id(job_id: str, key: str, start: int, end: int) -> str:
    """Deterministic id of a window's result: re-emission is deduplicated."""
    digest = hashlib.sha256(f"{job_id}\x00{key}\x00{start}\x00{end}".encode()).hexdigest()
    return f"win:{digest[:40]}"


def late_event_id(job_id: str, input_id: str, index: int) -> str:
    digest = hashlib.sha256(f"{job_id}\x00{input_id}\x00{index}".encode()).hexdigest()
    return f"late:{digest[:40]}"


@dataclass(slots=True)
class StreamTotals:
    """What this process's runners committed since it started (for metrics)."""

    records_accepted: int = 0
    records_late: int = 0
    records_rejected: int = 0
    windows_emitted: int = 0
    checkpoints: int = 0
    idle_flushes: int = 0

    def add(self, before: Counters, after: Counters) -> None:
        self.records_accepted += after.accepted - before.accepted
        self.records_late += after.late - before.late
        self.records_rejected += after.rejected - before.rejected
        self.windows_emitted += after.windows_emitted - before.windows_emitted
        self.checkpoints += after.checkpoints - before.checkpoints
        self.idle_flushes += after.idle_flushes - before.idle_flushes


class JobRunner:
    def __init__(
        self,
        job: StreamJob,
        *,
        uow: UnitOfWorkFactory,
        subscriptions: SubscriptionService,
        bus: EventBus,
        owner: str,
        lease: float,
        poll_interval: float,
        batch: int,
        totals: StreamTotals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.totals = totals if totals is not None else StreamTotals()
        self._uow = uow
        self._subs = subscriptions
        self._bus = bus
        self._owner = owner
        self._lease = lease
        self._poll = poll_interval
        self._batch = batch
        self._clock = clock
        self._reader = RecordReader(job.spec)
        self.restarts = 0
        self._failures = 0

    async def run(self) -> None:
        """Run until fenced (deleted or taken over) or cancelled."""
        self._failures = 0
        while True:
            consumer = uuid.uuid4().hex[:16]
            sub: Subscription | None = None
            try:
                sub = await self._subs.ensure(self.job.tenant, self.job.subscription, None)
                await self._steps(sub, consumer)
                return
            except Fenced:
                log.info("stream job stopped here: fenced", extra={"job_id": self.job.id})
                return
            except asyncio.CancelledError:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._subs.release(sub, consumer))
                raise
            except Exception as exc:
                self._failures += 1
                self.restarts += 1
                error_id = os.urandom(6).hex()
                log.warning(
                    "stream job step failed; resuming from the last checkpoint",
                    extra={"job_id": self.job.id, "error_id": error_id},
                    exc_info=exc,
                )
                # last_error is shown to callers (GetStreamJob): no internals.
                shown = (
                    exc.message
                    if isinstance(exc, DataMCPError)
                    else f"a step failed (error id {error_id}); resuming from the last checkpoint"
                )
                with contextlib.suppress(Exception):
                    if sub is not None:
                        await self._subs.release(sub, consumer)
                    async with self._uow() as tx:
                        await tx.streams.record_error(self.job.id, self._owner, shown[:1000])
                        await tx.commit()
                await asyncio.sleep(RESTART_BACKOFF.delay(self._failures))

    async def _load(self) -> tuple[StreamJob, WindowEngine]:
        async with self._uow() as tx:
            job = await tx.streams.get(self.job.tenant, self.job.id)
            if job is None:
                raise Fenced(self.job.id)
            windows = await tx.streams.windows(self.job.id)
        return job, WindowEngine(job.spec, windows, job.max_event_ms)

    async def _steps(self, sub: Subscription, consumer: str) -> None:
        job, engine = await self._load()
        counters = job.counters.copy()
        # Idle time counts from the last record read, or from this start: a
        # job that was down (or restarting) gives its sources a full idle
        # period to resume before it closes their windows.
        active_at = self._clock()
        # A job resuming after an error renews (clearing the error) at once.
        renewed = 0.0 if job.last_error else active_at
        while True:
            stored = self._bus.next_commit()
            deliveries = await self._subs.cycle(sub, consumer, self._batch, ())
            now = self._clock()
            if not deliveries and not await self._idle(sub, engine, now - active_at, 0):
                if now - renewed > self._lease / 3:
                    async with self._uow() as tx:
                        if not await tx.streams.renew(job.id, self._owner, now + self._lease):
                            raise Fenced(job.id)
                        await tx.commit()
                    renewed = now
                await wait_at_most(stored, self._poll)
                continue
            before = counters.copy()
            late = self._apply(job, engine, deliveries, counters)
            now = self._clock()
            if counters.records != before.records:
                active_at = now
            elif not deliveries or await self._idle(
                sub, engine, now - active_at, len(deliveries)
            ):  # no input at all, or only events the source filter drops
                engine.advance_past_open()
                counters.idle_flushes += 1
            await self._checkpoint(
                job,
                sub,
                engine=engine,
                deliveries=deliveries,
                counters=counters,
                late=late,
                now=now,
            )
            self.totals.add(before, counters)
            renewed = now
            self._failures = 0

    def _apply(
        self,
        job: StreamJob,
        engine: WindowEngine,
        deliveries: list[Delivery],
        counters: Counters,
    ) -> list[Event]:
        """Add the deliveries' records to the windows; returns the late-record
        events to publish."""
        late: list[Event] = []
        for delivery in deliveries:
            counters.inputs += 1
            for index, record in self._records(delivery, counters):
                prepared = self._reader.read(record, delivery.event.time)
                if not isinstance(prepared, Prepared):
                    counters.rejected += 1
                elif engine.add(prepared):
                    counters.accepted += 1
                else:
                    counters.late += 1
                    if job.spec.sink.late_events:
                        late.append(self._late_event(job, delivery.event, index, record, engine))
        return late

    async def _checkpoint(
        self,
        job: StreamJob,
        sub: Subscription,
        *,
        engine: WindowEngine,
        deliveries: list[Delivery],
        counters: Counters,
        late: list[Event],
        now: float,
    ) -> None:
        """Close what the watermark passed and commit the step in ONE
        transaction (state, acks, destination rows, result events)."""
        results = engine.close()
        counters.windows_emitted += len(results)
        counters.windows_open = len(engine.windows)
        counters.checkpoints += 1
        upserts, deletes = engine.changes()
        sink = job.spec.sink
        cp = Checkpoint(
            job_id=job.id,
            owner=self._owner,
            lease_until=now + self._lease,
            max_event_ms=engine.max_event_ms,
            counters=counters,
            at=now,
            upserts=upserts,
            deletes=deletes,
            table=sink.table,
            rows=[self._row(job, r, now) for r in results] if sink.table else [],
        )
        events = late
        if sink.emit_events:
            events = [self._window_event(job, r, engine) for r in results] + late
        async with self._uow() as tx:
            await tx.streams.checkpoint(cp)
            if deliveries:
                await tx.events.delete_deliveries(sub.id, [d.event.seq for d in deliveries])
            await _append_once(tx, events, now)
            await tx.commit()
        engine.mark_checkpointed()

    async def _idle(self, sub: Subscription, engine: WindowEngine, quiet: float, held: int) -> bool:
        """Whether the idle timeout closes the open windows now: the job has
        read no record for ``spec.idle_timeout`` (``quiet`` seconds so far)
        and its subscription holds no input but the ``held`` deliveries this
        step leased (input leased by a dead consumer, or waiting for a retry,
        has arrived: it is not idleness)."""
        idle_after = self.job.spec.idle_timeout_ms / 1000
        if not idle_after or not engine.windows or quiet < idle_after:
            return False
        _, stats = await self._subs.with_stats(sub)
        return stats.pending + stats.in_flight <= held

    def _records(self, delivery: Delivery, counters: Any) -> list[tuple[int, Any]]:
        event = delivery.event
        data = event.data
        if self.job.spec.pushed:
            if not isinstance(data, Mapping):
                counters.rejected += 1
                return []
            counters.rejected += int(data.get("rejected", 0))
            return list(enumerate(data.get("records", [])))
        source = self.job.spec.source
        assert source is not None
        if source.where and not (
            isinstance(data, Mapping)
            and all(get_path(data, k) == v for k, v in source.where.items())
        ):
            return []
        return [(0, data)]

    def _window_event(self, job: StreamJob, r: WindowResult, engine: WindowEngine) -> Event:
        return new_event(
            type=job.spec.sink.event_type,
            source=job.source_uri,
            subject=job.id,
            tenant=job.tenant,
            id=window_event_id(job.id, r.key, r.start, r.end),
            correlation_id=job.id,
            max_data_bytes=1 << 30,
            data={
                "job_id": job.id,
                "job_name": job.name,
                "key": self._reader.key_dict(r.key),
                "window_start": r.start / 1000,
                "window_end": r.end / 1000,
                "count": r.count,
                "aggregates": r.aggregates,
                "watermark": (engine.watermark or 0) / 1000,
            },
        )

    def _late_event(
        self, job: StreamJob, cause: Event, index: int, record: Any, engine: WindowEngine
    ) -> Event:
        return new_event(
            type=RECORD_LATE,
            source=job.source_uri,
            subject=job.id,
            tenant=job.tenant,
            id=late_event_id(job.id, cause.id, index),
            correlation_id=job.id,
            max_data_bytes=1 << 30,
            data={
                "job_id": job.id,
                "input_id": cause.id,
                "index": index,
                "record": record,
                "watermark": (engine.watermark or 0) / 1000,
            },
        )

    def _row(self, job: StreamJob, r: WindowResult, now: float) -> ResultRow:
        return ResultRow(
            id=window_event_id(job.id, r.key, r.start, r.end),
            tenant=job.tenant,
            job_id=job.id,
            key=r.key,
            window_start=r.start / 1000,
            window_end=r.end / 1000,
            record_count=r.count,
            aggregates=r.aggregates,
            emitted_at=now,
        )


async def _append_once(tx: UnitOfWork, events: list[Event], now: float) -> None:
    """Append the events whose ids are not stored yet (idempotent publish,
    inside the caller's transaction)."""
    fresh: dict[str, Event] = {}
    for e in events:
        fresh.setdefault(e.id, e)
    await tx.events.append(list(fresh.values()), now)
