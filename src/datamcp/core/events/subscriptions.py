"""Durable named subscriptions: at-least-once delivery with explicit acks.

A subscription keeps a cursor into the event store. Matching events past the
cursor are *materialised* into delivery rows; consumers *lease* deliveries
(visibility timeout), then ack (delete) or nack (retry later with backoff).
A lease that runs out makes the delivery visible again; after
``max_attempts`` a delivery moves to the dead-letter store with its last
error. Several consumers of one subscription compete for deliveries; a
delivery is only leased while it heads its subject, so order holds per
subject (a subscription created with ``ordered=False`` opts out: it leases
any visible delivery, for a consumer that orders by itself). All state is
in the database: a killed process loses nothing, and its leases simply
expire.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Callable, Sequence

from datamcp.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from datamcp.core.events.model import (
    ALL_TENANTS,
    DeadLetter,
    Delivery,
    Event,
    EventFilter,
    Subscription,
    SubscriptionStats,
)
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory
from datamcp.core.resilience import RetryPolicy

NAME_MAX = 128
MATERIALISE_BATCH = 1000
#: Pages a consumer round trip materialises at most (bounds one transaction).
MAX_PAGES_PER_CYCLE = 20
#: Events a consumer keeps read but not yet leased (beyond it, they are read again).
KNOWN_MAX = 5000


#: Redelivery backoff after a nack: 0.5 s doubling up to a minute, jittered.
NACK_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=60.0)


class KnownEvents(dict[int, Event]):
    """Events of one subscription read and not leased yet (events never
    change once stored). A class of its own so the service can hold it weakly."""


class SubscriptionService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        default_max_attempts: int = 5,
        default_visibility_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uow = uow
        self._default_attempts = default_max_attempts
        self._default_visibility = default_visibility_timeout
        self._clock = clock
        self._known: weakref.WeakValueDictionary[str, KnownEvents] = weakref.WeakValueDictionary()

    async def ensure(
        self,
        tenant: str,
        name: str,
        event_filter: EventFilter | None,
        *,
        from_earliest: bool = False,
        max_attempts: int | None = None,
        visibility_timeout: float | None = None,
        ordered: bool = True,
    ) -> Subscription:
        """Open an existing subscription, or create it when a filter is given.

        ``ordered=False`` (set at creation) leases deliveries without waiting
        for earlier ones of the same subject: for a single consumer that
        orders records by itself (stream jobs), it batches a one-subject
        stream instead of taking one event per round trip.

        Raises:
            InvalidArgument: bad name or settings.
            NotFound: no such subscription and no filter to create it with.
            FailedPrecondition: it exists with a different filter.
        """
        _check_name(name)
        attempts = max_attempts or self._default_attempts
        visibility = visibility_timeout or self._default_visibility
        if attempts < 1 or attempts > 100 or visibility <= 0 or visibility > 12 * 3600:
            raise InvalidArgument(
                "invalid subscription settings",
                [FieldViolation("max_attempts", "1..100; visibility_timeout 0..12h")],
            )
        async with self._uow() as tx:
            existing = await tx.events.get_subscription(tenant, name)
            if existing is not None:
                if event_filter is not None and event_filter != existing.filter:
                    raise FailedPrecondition(
                        f"subscription {name!r} exists with another filter; open it without "
                        "a filter, or use a new name",
                        reason="SUBSCRIPTION_FILTER_MISMATCH",
                    )
                return existing
            if event_filter is None:
                raise NotFound(
                    f"subscription {name!r} does not exist; give a filter to create it",
                    reason="SUBSCRIPTION_NOT_FOUND",
                )
            scope = None if tenant == ALL_TENANTS else tenant
            cursor = 0 if from_earliest else await tx.events.max_seq(scope)
            sub = Subscription(
                uuid.uuid4().hex,
                tenant,
                name,
                event_filter,
                cursor,
                attempts,
                visibility,
                self._clock(),
                ordered,
            )
            await tx.events.add_subscription(sub)
            await tx.commit()
        # Two creators may race; the insert ignores the loser, so read back the winner.
        return await self.get(tenant, name)

    async def get(self, tenant: str, name: str) -> Subscription:
        async with self._uow() as tx:
            sub = await tx.events.get_subscription(tenant, name)
        if sub is None:
            raise NotFound(f"subscription {name!r} does not exist", reason="SUBSCRIPTION_NOT_FOUND")
        return sub

    async def materialise(self, sub: Subscription) -> int:
        """Turn matching events past the cursor into deliveries; returns how many."""
        added = 0
        while True:
            async with self._uow() as tx:
                count, more = await self._materialise(tx, sub)
                await tx.commit()
            added += count
            if not more:
                return added

    async def lease(self, sub: Subscription, consumer: str, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` deliveries for ``consumer``."""
        return await self.cycle(sub, consumer, limit, ())

    async def cycle(
        self,
        sub: Subscription,
        consumer: str,
        limit: int,
        acks: Sequence[int],
        *,
        store_unchanged: bool = False,
        known: dict[int, Event] | None = None,
    ) -> list[Delivery]:
        """One consumer round trip in one transaction: drop the ``acks``,
        materialise new events, bury exhausted leases, lease up to ``limit``.

        Doing it in one transaction keeps a live subscription at one commit per
        round instead of three, which is what keeps delivery latency low.
        ``store_unchanged`` (nothing committed since this subscription last
        looked) skips reading the store. ``known`` is the caller's cache of
        events it has read (events never change once stored): a claimed
        event found there, or read by this round's materialisation, is not
        read again. It is filled with what this round read and not leased
        (see ``known_events``).
        """
        now = self._clock()
        cache: dict[int, Event] = {} if known is None else known
        found: dict[int, Event] = {}
        async with self._uow() as tx:
            if acks:
                await tx.events.delete_deliveries(sub.id, list(acks))
            claimed: list[tuple[int, int]] = []
            if limit > 0:
                more = not store_unchanged
                for _ in range(MAX_PAGES_PER_CYCLE):
                    if not more:
                        break
                    _, more = await self._materialise(tx, sub, cache)
                claimed, exhausted = await tx.events.claim(
                    sub.id,
                    now=now,
                    until=now + sub.visibility_timeout,
                    consumer=consumer,
                    limit=limit,
                    max_attempts=sub.max_attempts,
                    ordered=sub.ordered,
                )
                # Taken out of the cache at once, with no wait in between: the
                # consumers of this subscription in this process share it.
                for seq, _ in claimed:
                    if (event := cache.pop(seq, None)) is not None:
                        found[seq] = event
                for seq in exhausted:
                    cache.pop(seq, None)
                if exhausted:
                    await tx.events.bury(
                        sub.id, exhausted, "visibility timeout expired on the last attempt", now
                    )
                missing = [seq for seq, _ in claimed if seq not in found]
                if missing:
                    found.update(await tx.events.by_seqs(missing))
            await tx.commit()
        if len(cache) > KNOWN_MAX:
            cache.clear()
        return [Delivery(found[seq], attempt) for seq, attempt in claimed if seq in found]

    def known_events(self, sub: Subscription) -> dict[int, Event]:
        """The cache of ``sub``'s events read in this process and not leased
        yet, shared by its consumers here (pass it to ``cycle`` as ``known``):
        a delivery one consumer materialised and another leases is not read
        again. Kept while a consumer holds it."""
        cache = self._known.get(sub.id)
        if cache is None:
            cache = self._known[sub.id] = KnownEvents()
        return cache

    async def _materialise(
        self, tx: UnitOfWork, sub: Subscription, read: dict[int, Event] | None = None
    ) -> tuple[int, bool]:
        """One page of materialisation; returns (deliveries added, more pages left).
        The matching events go into ``read`` when given.

        Safe to run concurrently for one subscription (several consumers or
        processes). Where the store has row locks the cursor is read locked,
        so materialisers take turns and a second one reads on from where the
        first left off. Either way the cursor moves from what this
        transaction read (a compare-and-set) before any delivery is inserted,
        so of two materialisers of one page only the first inserts.
        (Inserting first would let the second re-insert a delivery the
        first's consumer had already acked: a duplicate with nothing failing.)
        """
        cursor, batch = await tx.events.read_after_cursor(sub.id, sub.tenant, MATERIALISE_BATCH)
        if cursor is None:
            raise NotFound(
                f"subscription {sub.name!r} was deleted", reason="SUBSCRIPTION_NOT_FOUND"
            )
        if not batch:
            return 0, False
        if not await tx.events.advance_cursor(sub.id, cursor, batch[-1].seq):
            return 0, False  # another transaction materialised this page
        matched = [e for e in batch if sub.filter.matches(e)]
        await tx.events.add_deliveries(sub.id, [(e.seq, e.subject) for e in matched])
        if read is not None:
            for e in matched:
                read[e.seq] = e
        return len(matched), len(batch) == MATERIALISE_BATCH

    async def ack(self, sub: Subscription, seqs: Sequence[int]) -> int:
        async with self._uow() as tx:
            removed = await tx.events.delete_deliveries(sub.id, list(seqs))
            await tx.commit()
        return removed

    async def nack(
        self, sub: Subscription, seq: int, error: str, retry_after: float | None = None
    ) -> bool:
        """Fail one delivery: retry later, or dead-letter it. True when buried."""
        now = self._clock()
        async with self._uow() as tx:
            found = await tx.events.delivery(sub.id, seq)
            if found is None:
                return False
            attempts, _ = found
            if attempts >= sub.max_attempts:
                await tx.events.bury(sub.id, [seq], error, now)
                buried = True
            else:
                delay = NACK_BACKOFF.delay(attempts) if retry_after is None else retry_after
                await tx.events.retry_later(sub.id, seq, now + delay, error)
                buried = False
            await tx.commit()
        return buried

    async def delete(self, tenant: str, name: str) -> tuple[int, int]:
        """Drop a subscription, its deliveries and dead letters.

        Returns (deliveries dropped, dead letters dropped). Live consumers of
        it stop receiving; opening it again needs a filter (it is new then).
        """
        sub = await self.get(tenant, name)
        async with self._uow() as tx:
            dropped = await tx.events.delete_subscription(sub.id)
            await tx.commit()
        return dropped

    async def release(self, sub: Subscription, consumer: str) -> None:
        """Make a departed consumer's leases visible again without waiting them out."""
        async with self._uow() as tx:
            await tx.events.release(sub.id, consumer, self._clock())
            await tx.commit()

    async def with_stats(self, sub: Subscription) -> tuple[Subscription, SubscriptionStats]:
        async with self._uow() as tx:
            current = await tx.events.get_subscription(sub.tenant, sub.name) or sub
            return current, await tx.events.stats(current, self._clock())

    async def list_with_stats(
        self, tenant: str, after: str, limit: int
    ) -> list[tuple[Subscription, SubscriptionStats]]:
        now = self._clock()
        async with self._uow() as tx:
            subs = await tx.events.list_subscriptions(tenant, after, limit)
            return [(s, await tx.events.stats(s, now)) for s in subs]

    async def dead_letters(
        self, tenant: str, name: str, after_seq: int, limit: int
    ) -> list[DeadLetter]:
        sub = await self.get(tenant, name)
        async with self._uow() as tx:
            return await tx.events.dead_letters(sub, after_seq, limit)

    async def redrive(self, tenant: str, name: str, seqs: Sequence[int] | None) -> int:
        sub = await self.get(tenant, name)
        async with self._uow() as tx:
            moved = await tx.events.redrive(sub, seqs)
            await tx.commit()
        return moved


def _check_name(name: str) -> None:
    if not name or len(name) > NAME_MAX or not all(c.isalnum() or c in "-_.:" for c in name):
        raise InvalidArgument(
            "invalid subscription name",
            [FieldViolation("subscription", f"1-{NAME_MAX} of letters, digits, - _ . :")],
            reason="INVALID_SUBSCRIPTION_NAME",
        )
