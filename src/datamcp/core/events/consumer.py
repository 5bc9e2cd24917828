"""One live consumer of a subscription: leasing with flow control, acks, nacks.

The consumer never holds more than ``credits`` unacknowledged deliveries, so
a slow consumer only slows itself: publishers write to the store regardless,
and the consumer catches up from the store when it has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from datamcp.core.events.bus import EventBus
from datamcp.core.events.subscriptions import Delivery, Subscription, SubscriptionService

LEASE_BATCH = 100


class Consumer:
    """Acks are batched: recorded at once, made durable by the next round trip
    (which the ack itself wakes), together with the next lease."""

    def __init__(
        self,
        service: SubscriptionService,
        bus: EventBus,
        subscription: Subscription,
        *,
        credits: int,
        poll_interval: float = 0.25,
    ) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.subscription = subscription
        self._service = service
        self._bus = bus
        self._credits = max(1, credits)
        self._poll = poll_interval
        self._in_flight: set[int] = set()
        self._acks: list[int] = []
        self._room = asyncio.Event()
        self._seen_generation = -1
        self._full_look = 0.0

    def grant(self, credits: int) -> None:
        """Allow ``credits`` more unacknowledged deliveries."""
        if credits > 0:
            self._credits += credits
            self._room.set()

    async def ack(self, seqs: Sequence[int]) -> None:
        self._acks.extend(seqs)
        self._settle(seqs)

    async def nack(self, seq: int, error: str, retry_after: float | None = None) -> None:
        await self.flush()
        await self._service.nack(self.subscription, seq, error, retry_after)
        self._settle([seq])

    def _settle(self, seqs: Sequence[int]) -> None:
        self._in_flight.difference_update(seqs)
        self._room.set()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries as they become available, forever (cancel to stop)."""
        while True:
            # Taken before the round trip, so an ack or a commit that lands
            # during it wakes the next round at once.
            self._room.clear()
            committed = self._bus.next_commit()
            room = self._credits - len(self._in_flight)
            acks, self._acks = self._acks, []
            batch: list[Delivery] = []
            if room > 0 or acks:
                # Skip reading the store when this process committed nothing since
                # the last look; look anyway every poll interval, for commits made
                # by other processes.
                generation, now = self._bus.generation, time.monotonic()
                unchanged = (
                    generation == self._seen_generation and now - self._full_look < self._poll
                )
                if not unchanged:
                    self._seen_generation, self._full_look = generation, now
                try:
                    batch = await self._service.cycle(
                        self.subscription,
                        self.id,
                        min(max(room, 0), LEASE_BATCH),
                        acks,
                        store_unchanged=unchanged,
                    )
                except BaseException:
                    self._acks[:0] = acks  # not durable yet: keep them for the next try
                    raise
            for delivery in batch:
                self._in_flight.add(delivery.event.seq)
                yield delivery
            if batch and len(batch) == min(room, LEASE_BATCH):
                continue  # there may be more right away
            if self._room.is_set() or (room > 0 and committed.is_set()):
                continue
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._room.wait())]
            if room > 0:
                waits.append(asyncio.ensure_future(committed.wait()))
            try:
                await asyncio.wait(waits, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w

    async def flush(self) -> None:
        """Make recorded acks durable now."""
        acks, self._acks = self._acks, []
        if acks:
            try:
                await self._service.cycle(self.subscription, self.id, 0, acks)
            except BaseException:
                self._acks[:0] = acks
                raise

    async def close(self) -> None:
        """Flush acks, then give unacknowledged deliveries back at once."""
        await self.flush()
        await self._service.release(self.subscription, self.id)
