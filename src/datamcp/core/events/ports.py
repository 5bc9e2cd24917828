"""What the event bus needs from the outside: a store and outbound brokers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from datamcp.core.events.model import DeadLetter, Event, Subscription, SubscriptionStats


class Broker(Protocol):
    """Forwards committed events to another system (EventBridge, SQS, ...).

    ``publish`` is called after the events are durable in the store, in
    store order; it raises when some events could not be delivered after its
    own retries, so the caller can record and retry them.
    """

    name: str

    async def publish(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...


class EventRepository(Protocol):
    """Durable storage of events, subscriptions, deliveries and dead letters."""

    async def existing(self, tenant: str, ids: Sequence[str]) -> dict[str, int]: ...
    async def append(self, batch: Sequence[Event], stored_at: float) -> list[tuple[int, bool]]:
        """Store the events whose (tenant, id) is not stored yet. Per event
        its seq and whether this call stored it (False: stored before).
        (tenant, id) must be distinct within ``batch``."""
        ...

    async def read(
        self, tenant: str, after_seq: int, limit: int, since_time: float | None = None
    ) -> list[Event]: ...
    async def by_seqs(self, seqs: Sequence[int]) -> dict[int, Event]: ...
    async def read_after_cursor(
        self, subscription_id: str, tenant: str, limit: int
    ) -> tuple[int | None, list[Event]]:
        """The cursor (None: no such subscription) and up to ``limit`` events
        after it. Where the store has row locks, the subscription's row stays
        locked until the transaction ends (materialisers take turns)."""
        ...

    async def max_seq(self, tenant: str | None = None) -> int: ...
    async def delete_expired(self, older_than: float | None, keep_last: int | None) -> int:
        """Drop events older than ``older_than`` or beyond the newest ``keep_last``
        of their tenant, unless a delivery, dead letter or subscription needs them."""
        ...

    async def get_subscription(self, tenant: str, name: str) -> Subscription | None: ...
    async def add_subscription(self, sub: Subscription) -> None: ...
    async def list_subscriptions(
        self, tenant: str, after: str, limit: int
    ) -> list[Subscription]: ...
    async def delete_subscription(self, subscription_id: str) -> tuple[int, int]: ...
    async def cursor(self, subscription_id: str) -> int | None: ...
    async def advance_cursor(self, subscription_id: str, read: int, seq: int) -> bool:
        """Move the cursor from ``read`` (what this transaction read) to
        ``seq``; False when another transaction moved it first (then this
        one must not materialise the page: it is done)."""
        ...

    async def stats(self, sub: Subscription, now: float) -> SubscriptionStats: ...
    async def add_deliveries(
        self, subscription_id: str, items: Sequence[tuple[int, str]]
    ) -> None: ...
    async def claim(
        self,
        subscription_id: str,
        *,
        now: float,
        until: float,
        consumer: str,
        limit: int,
        max_attempts: int,
        ordered: bool = True,
    ) -> tuple[list[tuple[int, int]], list[int]]: ...
    async def delivery(self, subscription_id: str, seq: int) -> tuple[int, str | None] | None: ...
    async def delete_deliveries(self, subscription_id: str, seqs: Sequence[int]) -> int: ...
    async def retry_later(
        self, subscription_id: str, seq: int, visible_at: float, error: str
    ) -> None: ...
    async def release(self, subscription_id: str, consumer: str, now: float) -> None: ...
    async def bury(
        self, subscription_id: str, seqs: Sequence[int], error: str, at: float
    ) -> None: ...
    async def dead_letters(
        self, sub: Subscription, after_seq: int, limit: int
    ) -> list[DeadLetter]: ...
    async def redrive(self, sub: Subscription, seqs: Sequence[int] | None) -> int: ...
