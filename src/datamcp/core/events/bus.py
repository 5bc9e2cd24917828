"""The event bus: durable, idempotent publish with group commit, and replay.

Publishers hand events to one writer task per process. While a commit is in
flight, later publishes queue up and go into the next commit together, so
throughput does not collapse to one transaction per event, and a batch
published together is always one transaction (all or nothing). One
publish's bad data never fails the others of its group: a commit that fails
for anything but a store outage is retried in halves until the offending
publish fails alone. After each commit, waiting consumers are woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import Unavailable
from datamcp.core.events.model import Event, EventFilter
from datamcp.core.health import CheckResult, Status
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory, Write, WriteOp
from datamcp.core.signals import LocalSignals, Signals

log = logging.getLogger(__name__)

REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where an event was stored. ``event`` is as published (its own ``seq``
    unset); ``seq`` is its position in the store."""

    event: Event
    seq: int
    duplicate: bool


@dataclass(slots=True)
class _Pending:
    events: list[Event]
    writes: Sequence[Write]
    future: asyncio.Future[list[PublishResult]]

    @property
    def size(self) -> int:
        return len(self.events) + len(self.writes)


class EventBus:
    """Publish and replay events; wake consumers when new ones are committed.

    Args:
        uow: unit-of-work factory over the store.
        max_batch: most events in one group commit.
        backlog_warning: queued events above which health says DEGRADED.
        signals: wake-ups to and from the other processes on this database.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        max_batch: int = 5000,
        backlog_warning: int = 50_000,
        retention_age: float = 0.0,
        retention_count: int = 0,
        retention_interval: float = 300.0,
        clock: Callable[[], float] = time.time,
        signals: Signals | None = None,
    ) -> None:
        self._uow = uow
        #: Other processes on this database hear of our commits, we of theirs.
        self.signals = signals or LocalSignals()
        self.signals.subscribe("events", lambda _tenant: self._signal())
        self._max_batch = max_batch
        self._backlog_warning = backlog_warning
        self._clock = clock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._committed = asyncio.Event()
        self._retention = (retention_age, retention_count, retention_interval)
        self._pruner: asyncio.Task[None] | None = None
        self.commits = 0
        self.published = 0
        #: Bumped by every commit of this process: a cheap "anything new?" check.
        self.generation = 0
        self._listeners: set[asyncio.Event] = set()

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="event-bus-writer")
        age, count, _ = self._retention
        if self._pruner is None and (age or count):
            self._pruner = asyncio.create_task(self._prune_loop(), name="event-bus-retention")

    async def stop(self) -> None:
        """Commit what is queued, then stop the writer."""
        await cancel_and_wait(self._pruner)
        self._pruner = None
        if self._writer is None:
            return
        if not self._writer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), 10)
        await cancel_and_wait(self._writer)
        self._writer = None

    async def publish(
        self, events: Sequence[Event], writes: Sequence[Write] = ()
    ) -> list[PublishResult]:
        """Store ``events`` durably, in order, in one transaction.

        An event whose (tenant, id) is already stored is not stored again; its
        result says ``duplicate`` and carries the stored sequence number.
        ``writes`` commit in the same transaction (a state change and the
        event announcing it land together or not at all: a transactional
        outbox), applied before the events.

        Raises:
            Unavailable: the store could not be written; nothing was stored.
            InvalidArgument: the store refused this publish's data (others
                committed in the same group are unaffected).
        """
        if not events and not writes:
            return []
        if self._writer is None:
            raise Unavailable("the event bus is not running", reason="EVENT_BUS_STOPPED")
        future: asyncio.Future[list[PublishResult]] = asyncio.get_running_loop().create_future()
        pending = _Pending(list(events), writes, future)
        self._queue.put_nowait(pending)
        self._queued += pending.size
        # No shield needed: a caller cancelled while waiting cancels only its
        # future; the queued publish still commits (the writer skips setting
        # a result on a done future).
        return await future

    def next_commit(self) -> asyncio.Event:
        """An event set by the next commit. Take it *before* looking at the
        store, so a commit that lands while you look is not missed."""
        return self._committed

    def listen(self, wake: asyncio.Event) -> None:
        """Set ``wake`` after every commit until ``unlisten`` (no per-wait
        future: what a long-lived consumer uses)."""
        self._listeners.add(wake)

    def unlisten(self, wake: asyncio.Event) -> None:
        self._listeners.discard(wake)

    def _signal(self) -> None:
        self.generation += 1
        self._committed.set()
        self._committed = asyncio.Event()
        for wake in self._listeners:
            wake.set()

    def committed_elsewhere(self) -> None:
        """Wake consumers (here and in the other processes on this database)
        after events were committed by another writer of this process in its
        own transaction (a transactional outbox, such as memory writes on the
        application database)."""
        self._signal()
        self.signals.send("events", "*")

    async def wait_for_commit(self, within: float) -> None:
        """Return after the next commit, or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._committed.wait(), within)

    async def replay(
        self,
        tenant: str,
        event_filter: EventFilter,
        *,
        from_seq: int = 0,
        from_time: float | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Event]:
        """Stored events after ``from_seq`` (and at or after ``from_time``), in order.

        Reads pages in short transactions, so live subscriptions and writers
        are never held up by a long replay.
        """
        cursor, sent = from_seq, 0
        while limit is None or sent < limit:
            async with self._uow() as tx:
                page = await tx.events.read(tenant, cursor, REPLAY_PAGE, from_time)
            for event in page:
                if event_filter.matches(event):
                    yield event
                    sent += 1
                    if limit is not None and sent >= limit:
                        return
            if len(page) < REPLAY_PAGE:
                return
            cursor = page[-1].seq

    async def prune(self) -> int:
        """Apply retention now: drop events past the age or the per-tenant count
        limit that no pending delivery or dead letter still needs. Returns how many."""
        age, count, _ = self._retention
        older_than = self._clock() - age if age else None
        async with self._uow() as tx:
            removed = await tx.events.delete_expired(older_than, count or None)
            await tx.commit()
        return removed

    async def _prune_loop(self) -> None:
        interval = self._retention[2]
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info("event retention", extra={"removed": removed})
            except Exception:
                log.warning("event retention failed", exc_info=True)
            await asyncio.sleep(interval)

    async def check(self) -> CheckResult:
        """Health: the writer is alive and its backlog is bounded."""
        if self._writer is None or self._writer.done():
            return CheckResult(Status.UNHEALTHY, "event writer is not running")
        detail = f"{self._queued} queued, {self.published} published in {self.commits} commits"
        if self._queued > self._backlog_warning:
            return CheckResult(Status.DEGRADED, "publish backlog high: " + detail)
        return CheckResult(Status.HEALTHY, detail, {"queued": str(self._queued)})

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            count = batch[0].size
            while count < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                count += item.size
            try:
                await self._settle(batch)
            finally:
                self._queued -= count
                for _ in batch:
                    self._queue.task_done()

    async def _settle(self, batch: list[_Pending]) -> None:
        """Commit ``batch`` and answer each publish. When the commit fails for
        anything but an outage, one publish's data is at fault: the batch is
        split in halves until the bad one is alone, so it fails by itself
        and every other publish of the group still commits."""
        try:
            results = await self._commit(
                [e for p in batch for e in p.events], [w for p in batch for w in p.writes]
            )
        except Unavailable as exc:  # the store is down: nobody's fault, nothing stored
            log.warning("event store write failed", exc_info=exc)
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                await self._settle(batch[:middle])
                await self._settle(batch[middle:])
                return
            log.error("a publish could not be stored", exc_info=exc)
            _fail(batch, exc)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.events)
            if not pending.future.done():
                pending.future.set_result(results[start:end])
            start = end
        self.commits += 1
        stored = [r.event.tenant for r in results if not r.duplicate]
        self.published += len(stored)
        self._signal()
        if stored:
            tenants = set(stored)
            self.signals.send("events", tenants.pop() if len(tenants) == 1 else "*")

    async def _commit(self, events: list[Event], writes: list[Write]) -> list[PublishResult]:
        # The first of a repeated (tenant, id) in one batch is the one stored.
        firsts: dict[tuple[str, str], Event] = {}
        for e in events:
            firsts.setdefault((e.tenant, e.id), e)
        async with self._uow() as tx:
            if writes:
                await _apply(tx, writes)
            stored = await tx.events.append(list(firsts.values()), self._clock())
            await tx.commit()
        where = dict(zip(firsts, stored, strict=True))
        results: list[PublishResult] = []
        for e in events:
            key = (e.tenant, e.id)
            seq, new = where[key]
            # A duplicate: stored before, or the same id earlier in this batch.
            results.append(PublishResult(e, seq, not (new and firsts[key] is e)))
        return results


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


async def _apply(tx: UnitOfWork, writes: list[Write]) -> None:
    """Apply writes op by op (in rank order), each op's items in arrival order."""
    by_op: dict[WriteOp, list[object]] = {}
    for w in writes:
        by_op.setdefault(w.op, []).append(w.item)
    for op in sorted(by_op, key=lambda o: o.rank):
        await op.apply(tx, by_op[op])
