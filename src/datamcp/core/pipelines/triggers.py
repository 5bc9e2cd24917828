"""What starts pipeline runs by itself: cron schedules (a due slot is
claimed with a conditional update, so one replica fires it) and
spec-declared event triggers: one durable subscription per
trigger of a pipeline (``pipeline:<id>:<n>``), shared by the replicas, whose
deliveries start runs (the run id derives from the event, so a redelivery
starts nothing new)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from croniter import croniter

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import (
    DataMCPError,
    FailedPrecondition,
    NotFound,
    error_id,
    failure_text,
)
from datamcp.core.events.api import EventsApi
from datamcp.core.events.consumer import Consumer
from datamcp.core.events.model import Event
from datamcp.core.pipelines.model import Pipeline, Trigger, run_id_for
from datamcp.core.pipelines.runs import RunManager
from datamcp.core.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)

_MAX_TRIGGERS = 8
RunForEvent = Callable[[str, Event, Mapping[str, Any]], Awaitable[Any]]


class EventTriggers:
    def __init__(self, uow: UnitOfWorkFactory, events: EventsApi, run: RunForEvent) -> None:
        self._uow = uow
        self._events = events
        self._run = run
        self.started = False
        self.active: dict[str, tuple[str, asyncio.Task[None], list[Consumer]]] = {}

    async def stop(self) -> None:
        self.started = False
        for _key, task, consumers in list(self.active.values()):
            await cancel_and_wait(task)
            for c in consumers:
                with contextlib.suppress(Exception):
                    await c.close()
        self.active.clear()

    async def refresh(self) -> None:
        async with self._uow() as tx:
            pipelines = await tx.pipelines.triggered_pipelines()
        wanted = {p.id for p in pipelines}
        for pid in list(self.active):
            if pid not in wanted:
                await self.drop(pid)
        for p in pipelines:
            await self.sync(p)

    def _trigger_key(self, pipeline: Pipeline) -> str:
        return repr([dict(t) for t in pipeline.spec.triggers])

    async def sync(self, pipeline: Pipeline) -> None:
        if not self.started:
            return  # not started (a CLI or a test of the core): no consumers
        current = self.active.get(pipeline.id)
        key = self._trigger_key(pipeline)
        if current is not None and current[0] == key:
            return
        await self.drop(pipeline.id)
        if not pipeline.spec.triggers:
            return
        consumers = []
        for n, flt in enumerate(pipeline.spec.trigger_filters()):
            name = f"pipeline:{pipeline.id}:{n}"
            try:
                consumer = await self._events.open_consumer(pipeline.tenant, name, flt)
            except FailedPrecondition:  # the spec's filter changed: start afresh
                with contextlib.suppress(NotFound):
                    await self._events.subscriptions.delete(pipeline.tenant, name)
                consumer = await self._events.open_consumer(pipeline.tenant, name, flt)
            consumers.append(consumer)
        for n in range(len(pipeline.spec.triggers), _MAX_TRIGGERS):
            with contextlib.suppress(NotFound):  # triggers removed by an update
                await self._events.subscriptions.delete(
                    pipeline.tenant, f"pipeline:{pipeline.id}:{n}"
                )
        task = asyncio.create_task(
            self._trigger_loop(pipeline.id, consumers), name=f"pipeline-trigger:{pipeline.id}"
        )
        self.active[pipeline.id] = (key, task, consumers)

    async def drop(self, pipeline_id: str, tenant: str = "") -> None:
        """Stop consuming; with ``tenant`` (a deleted pipeline) also delete the
        subscriptions so they hold no events back from retention."""
        current = self.active.pop(pipeline_id, None)
        if current is not None:
            _key, task, consumers = current
            await cancel_and_wait(task)
            for c in consumers:
                with contextlib.suppress(Exception):
                    await c.close()
        if tenant:
            for n in range(_MAX_TRIGGERS):
                with contextlib.suppress(NotFound):
                    await self._events.subscriptions.delete(tenant, f"pipeline:{pipeline_id}:{n}")

    async def _trigger_loop(self, pipeline_id: str, consumers: list[Consumer]) -> None:
        await asyncio.gather(*(self._consume(pipeline_id, c) for c in consumers))

    async def _consume(self, pipeline_id: str, consumer: Consumer) -> None:
        while True:
            try:
                async for delivery in consumer.deliveries():
                    event = delivery.event
                    try:
                        await self._run(pipeline_id, event, {})
                    except FailedPrecondition as exc:
                        await consumer.nack(event.seq, exc.message, retry_after=5.0)
                    except Exception as exc:
                        log.warning(
                            "pipeline trigger failed",
                            extra={"event_id": event.id, "error_id": error_id(exc)},
                            exc_info=exc,
                        )
                        await consumer.nack(event.seq, failure_text(exc))
                    else:
                        await consumer.ack([event.seq])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("pipeline trigger loop failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)


def next_fire(schedule: str, after: float) -> float | None:
    if not schedule:
        return None
    return float(croniter(schedule, after).get_next(float))


async def fire_due(uow: UnitOfWorkFactory, runs: RunManager, now: float) -> int:
    """Start a run for every due schedule slot this replica claims."""
    async with uow() as tx:
        due = await tx.pipelines.due_pipelines(now, 100)
    fired = 0
    for pipeline in due:
        slot = pipeline.next_fire_at
        assert slot is not None
        following = next_fire(pipeline.spec.schedule, max(slot, now))
        async with uow() as tx:
            claimed = await tx.pipelines.claim_slot(pipeline.id, slot, following or 0.0)
            await tx.commit()
        if not claimed:
            continue
        try:
            await runs.submit(
                pipeline,
                params={},
                trigger=Trigger.SCHEDULE,
                request_id=f"schedule:{slot:.3f}",
                correlation_id="",
                run_id=run_id_for(pipeline.tenant, f"schedule:{pipeline.id}:{slot:.3f}"),
            )
            fired += 1
        except DataMCPError as exc:
            log.warning(
                "scheduled run skipped",
                extra={"pipeline_id": pipeline.id, "reason": exc.reason, "error": exc.message},
            )
    return fired
