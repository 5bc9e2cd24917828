"""One live consumer of a subscription: leasing with flow control, acks, nacks.

The consumer never holds more than ``credits`` unacknowledged deliveries, so
a slow consumer only slows itself: publishers write to the store regardless,
and the consumer catches up from the store when it has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from datamcp.core.events.bus import EventBus
from datamcp.core.events.subscriptions import Delivery, Subscription, SubscriptionService

LEASE_BATCH = 100


class Consumer:
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
        self._room = asyncio.Event()

    def grant(self, credits: int) -> None:
        """Allow ``credits`` more unacknowledged deliveries."""
        if credits > 0:
            self._credits += credits
            self._room.set()

    async def ack(self, seqs: Sequence[int]) -> None:
        await self._service.ack(self.subscription, seqs)
        self._settle(seqs)

    async def nack(self, seq: int, error: str, retry_after: float | None = None) -> None:
        await self._service.nack(self.subscription, seq, error, retry_after)
        self._settle([seq])

    def _settle(self, seqs: Sequence[int]) -> None:
        self._in_flight.difference_update(seqs)
        self._room.set()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries as they become available, forever (cancel to stop)."""
        while True:
            room = self._credits - len(self._in_flight)
            batch: list[Delivery] = []
            if room > 0:
                batch = await self._service.lease(
                    self.subscription, self.id, min(room, LEASE_BATCH)
                )
            for delivery in batch:
                self._in_flight.add(delivery.event.seq)
                yield delivery
            if batch and len(batch) == min(room, LEASE_BATCH):
                continue  # there may be more right away
            self._room.clear()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._room.wait())]
            if room > 0:
                waits.append(asyncio.ensure_future(self._bus.wait_for_commit(self._poll)))
            try:
                await asyncio.wait(waits, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w

    async def close(self) -> None:
        """Give this consumer's unacknowledged deliveries back at once."""
        await self._service.release(self.subscription, self.id)
