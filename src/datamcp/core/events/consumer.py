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

from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Delivery, Subscription
from datamcp.core.events.subscriptions import SubscriptionService

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
        #: Set by acks, nacks, grants and (while iterating) commits: one
        #: event to wait on, so a wait creates no tasks or futures.
        self._wake = asyncio.Event()
        self._seen_generation = -1
        self._full_look = 0.0
        #: Events read and not yet leased, shared with this process's other
        #: consumers of the subscription.
        self._known = service.known_events(subscription)

    def grant(self, credits: int) -> None:
        """Allow ``credits`` more unacknowledged deliveries."""
        if credits > 0:
            self._credits += credits
            self._wake.set()

    async def ack(self, seqs: Sequence[int]) -> None:
        self._acks.extend(seqs)
        self._settle(seqs)

    async def nack(self, seq: int, error: str, retry_after: float | None = None) -> None:
        await self.flush()
        await self._service.nack(self.subscription, seq, error, retry_after)
        self._settle([seq])

    def _settle(self, seqs: Sequence[int]) -> None:
        self._in_flight.difference_update(seqs)
        self._wake.set()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries as they become available, forever (cancel to stop)."""
        self._bus.listen(self._wake)
        try:
            while True:
                # Cleared before the round trip, so an ack or a commit that
                # lands during it wakes the next round at once.
                self._wake.clear()
                room = self._credits - len(self._in_flight)
                acks, self._acks = self._acks, []
                batch: list[Delivery] = []
                if room > 0 or acks:
                    # Skip reading the store when this process committed nothing
                    # since the last look; look anyway every poll interval, for
                    # commits made by other processes.
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
                            known=self._known,
                        )
                    except BaseException:
                        self._acks[:0] = acks  # not durable yet: keep them for the next try
                        raise
                for delivery in batch:
                    self._in_flight.add(delivery.event.seq)
                    yield delivery
                if batch and len(batch) == min(room, LEASE_BATCH):
                    continue  # there may be more right away
                if self._wake.is_set():
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._wake.wait()
        finally:
            self._bus.unlisten(self._wake)

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
        self._bus.unlisten(self._wake)
        await self.flush()
        await self._service.release(self.subscription, self.id)
