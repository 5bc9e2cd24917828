"""SQL side of the event store, subscriptions, deliveries and dead letters.

The hot statements are written once and run through the unit of work's
executor (``executor.py``: one driver trip each on SQLite). Two differences
between the dialects stay, on purpose, chosen once in the constructor:

- ``append``: on PostgreSQL appends take turns under an advisory lock (so
  events commit in seq order with concurrent replicas; SQLite has one writer)
  and a batch is one executemany with RETURNING. SQLite's driver cannot
  return rows from an executemany: a batch looks up the stored ids first and
  derives the new seqs from the last one (it holds the write lock).
- ``claim``: PostgreSQL picks candidates in a ``FOR UPDATE SKIP LOCKED`` CTE
  (competing replicas pass over each other's rows); SQLite has no row locks:
  a plain ``IN`` subquery.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from datamcp.adapters.sqlalchemy.event_sql import (
    ADD_DELIVERY,
    ADVANCE_CURSOR,
    APPEND,
    APPEND_TURN,
    BY_SEQS,
    CLAIM,
    DELETE_DELIVERIES,
    EVENT_ROW,
    EXISTING,
    INSERT_DEAD_LETTERS,
    INSERT_NEW,
    INSERT_SUBSCRIPTION,
    MAX_SEQ,
    READ_AFTER_CURSOR,
    event_row,
    to_event,
    to_subscription,
)
from datamcp.adapters.sqlalchemy.executor import (
    Executor,
    executor_for,
)
from datamcp.adapters.sqlalchemy.tables import dead_letters, deliveries, events, subscriptions
from datamcp.core.events.model import (
    ALL_TENANTS,
    DeadLetter,
    Event,
    Subscription,
    SubscriptionStats,
)


class SqlEventRepository:
    def __init__(self, conn: AsyncConnection, executor: Executor | None = None) -> None:
        self._conn = conn
        self._x = executor if executor is not None else executor_for(conn)
        # The dialects' two differences (see the module docstring).
        self._postgres = conn.dialect.name == "postgresql"
        self._claim = CLAIM[self._postgres]
        self._read_after_cursor = READ_AFTER_CURSOR[self._postgres]

    # --- events -------------------------------------------------------------------

    async def existing(self, tenant: str, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self._x.rows(EXISTING, {"tenant": tenant, "ids": ids})
        return {row.id: row.seq for row in rows}

    async def append(self, batch: Sequence[Event], stored_at: float) -> list[tuple[int, bool]]:
        """Store the events not stored yet; per event its seq and whether this
        call stored it ((tenant, id) distinct within ``batch``)."""
        if not batch:
            return []
        rows = [event_row(e, stored_at) for e in batch]
        if self._postgres:
            # Subscriptions read "events after my cursor". With concurrent
            # writers (replicas), a later seq could commit before an earlier
            # one and a reader in between would skip the earlier one for
            # good. Appends take turns, so events commit in seq order.
            # (SQLite writers always do.)
            await self._x.rows(APPEND_TURN)
        if len(rows) == 1:
            # The common case at low rates: one statement that skips a stored
            # id and returns the new seq (one trip to the SQLite driver).
            found = await self._x.rows(APPEND, rows[0])
            e = batch[0]
            return await self._with_stored(batch, {(e.tenant, e.id): found[0].seq} if found else {})
        if self._postgres:
            result = await self._conn.execute(APPEND, rows)  # RETURNING over executemany
            return await self._with_stored(batch, {(r.tenant, r.id): r.seq for r in result})
        # SQLite cannot return rows from executemany: look up the stored ids
        # first. The write lock is held from the insert to the commit, so the
        # new rows' AUTOINCREMENT seqs are the last ``len(fresh)`` ones.
        known = await self._stored(batch)
        fresh = [row for e, row in zip(batch, rows, strict=True) if (e.tenant, e.id) not in known]
        seqs: Iterator[int] = iter(())
        if fresh:
            await self._x.many(INSERT_NEW, fresh)
            (last,) = await self._x.rows(MAX_SEQ)
            top = int(last[0] or 0)
            seqs = iter(range(top - len(fresh) + 1, top + 1))
        return [
            (known[key], False) if (key := (e.tenant, e.id)) in known else (next(seqs), True)
            for e in batch
        ]

    async def _with_stored(
        self, batch: Sequence[Event], new: dict[tuple[str, str], int]
    ) -> list[tuple[int, bool]]:
        """``append``'s answer from the seqs it stored: the others' looked up."""
        known = await self._stored([e for e in batch if (e.tenant, e.id) not in new])
        return [
            (new[key], True) if (key := (e.tenant, e.id)) in new else (known[key], False)
            for e in batch
        ]

    async def _stored(self, batch: Sequence[Event]) -> dict[tuple[str, str], int]:
        """The seqs of the events of ``batch`` already stored, by (tenant, id)."""
        known: dict[tuple[str, str], int] = {}
        for tenant in {e.tenant for e in batch}:
            ids = [e.id for e in batch if e.tenant == tenant]
            known.update(((tenant, i), s) for i, s in (await self.existing(tenant, ids)).items())
        return known

    async def read(
        self, tenant: str, after_seq: int, limit: int, since_time: float | None = None
    ) -> list[Event]:
        query = select(events).where(events.c.seq > after_seq)
        if tenant != ALL_TENANTS:
            query = query.where(events.c.tenant == tenant)
        if since_time is not None:
            query = query.where(events.c.time >= since_time)
        rows = await self._conn.execute(query.order_by(events.c.seq).limit(limit))
        return [to_event(row) for row in rows]

    async def read_after_cursor(
        self, subscription_id: str, tenant: str, limit: int
    ) -> tuple[int | None, list[Event]]:
        """The subscription's cursor and up to ``limit`` events after it, in
        one statement (``None`` when the subscription does not exist)."""
        every = tenant == ALL_TENANTS
        params: dict[str, Any] = {"sub_id": subscription_id, "limit": limit}
        if not every:
            params["tenant"] = tenant
        rows = await self._x.rows(self._read_after_cursor[every], params)
        if not rows:
            return None, []
        # Each row is the cursor, then the event's columns (None past the last).
        return int(rows[0][0]), [to_event(row[1:]) for row in rows if row[1] is not None]

    async def by_seqs(self, seqs: Sequence[int]) -> dict[int, Event]:
        if not seqs:
            return {}
        rows = await self._x.rows(BY_SEQS, {"seqs": seqs})
        return {row.seq: to_event(row) for row in rows}

    async def max_seq(self, tenant: str | None = None) -> int:
        query = MAX_SEQ
        if tenant is not None:
            query = query.where(events.c.tenant == tenant)
        return int((await self._conn.execute(query)).scalar() or 0)

    async def delete_expired(self, older_than: float | None, keep_last: int | None) -> int:
        """Retention: drop events past either limit that no delivery, dead letter
        or lagging subscription still needs. ``keep_last`` counts per tenant:
        one tenant's volume never pushes another tenant's events out."""
        conditions = []
        if older_than is not None:
            conditions.append(events.c.stored_at < older_than)
        if keep_last is not None:
            e = events.c
            for tenant in (await self._conn.execute(select(e.tenant).distinct())).scalars():
                cutoff = (
                    await self._conn.execute(
                        select(e.seq)
                        .where(e.tenant == tenant)
                        .order_by(e.seq.desc())
                        .offset(keep_last)
                        .limit(1)
                    )
                ).scalar()
                if cutoff is not None:
                    conditions.append(and_(e.tenant == tenant, e.seq <= cutoff))
        if not conditions:
            return 0
        referenced = exists().where(deliveries.c.seq == events.c.seq)
        dead = exists().where(dead_letters.c.seq == events.c.seq)
        # A subscription that has not looked at an event yet still needs it.
        unread = exists().where(
            subscriptions.c.tenant.in_([events.c.tenant, ALL_TENANTS]),
            subscriptions.c.cursor < events.c.seq,
        )
        result = await self._conn.execute(
            delete(events).where(or_(*conditions), ~referenced, ~dead, ~unread)
        )
        return int(result.rowcount or 0)

    # --- subscriptions --------------------------------------------------------------

    async def get_subscription(self, tenant: str, name: str) -> Subscription | None:
        row = (
            await self._conn.execute(
                select(subscriptions).where(
                    subscriptions.c.tenant == tenant, subscriptions.c.name == name
                )
            )
        ).one_or_none()
        return None if row is None else to_subscription(row)

    async def add_subscription(self, sub: Subscription) -> None:
        await self._conn.execute(
            INSERT_SUBSCRIPTION.values(
                id=sub.id,
                tenant=sub.tenant,
                name=sub.name,
                filter=sub.filter.to_json(),
                cursor=sub.cursor,
                max_attempts=sub.max_attempts,
                visibility_timeout=sub.visibility_timeout,
                created_at=sub.created_at,
                ordered=sub.ordered,
            )
        )

    async def list_subscriptions(self, tenant: str, after: str, limit: int) -> list[Subscription]:
        rows = await self._conn.execute(
            select(subscriptions)
            .where(subscriptions.c.tenant == tenant, subscriptions.c.name > after)
            .order_by(subscriptions.c.name)
            .limit(limit)
        )
        return [to_subscription(row) for row in rows]

    async def delete_subscription(self, subscription_id: str) -> tuple[int, int]:
        dropped = await self._conn.execute(
            delete(deliveries).where(deliveries.c.subscription_id == subscription_id)
        )
        dead = await self._conn.execute(
            delete(dead_letters).where(dead_letters.c.subscription_id == subscription_id)
        )
        await self._conn.execute(delete(subscriptions).where(subscriptions.c.id == subscription_id))
        return int(dropped.rowcount or 0), int(dead.rowcount or 0)

    async def cursor(self, subscription_id: str) -> int | None:
        value = (
            await self._conn.execute(
                select(subscriptions.c.cursor).where(subscriptions.c.id == subscription_id)
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    async def advance_cursor(self, subscription_id: str, read: int, seq: int) -> bool:
        params = {"sub_id": subscription_id, "read": read, "seq": seq}
        return await self._x.run(ADVANCE_CURSOR, params) == 1

    async def stats(self, sub: Subscription, now: float) -> SubscriptionStats:
        d = deliveries.c
        pending, in_flight = (
            await self._conn.execute(
                select(
                    func.count().filter(d.visible_at <= now),
                    func.count().filter(d.visible_at > now),
                ).where(d.subscription_id == sub.id)
            )
        ).one()
        unread_query = select(func.count()).where(events.c.seq > sub.cursor)
        if sub.tenant != ALL_TENANTS:
            unread_query = unread_query.where(events.c.tenant == sub.tenant)
        unread = (await self._conn.execute(unread_query)).scalar()
        dead = (
            await self._conn.execute(
                select(func.count()).where(dead_letters.c.subscription_id == sub.id)
            )
        ).scalar()
        return SubscriptionStats(int(pending), int(in_flight), int(unread or 0), int(dead or 0))

    # --- deliveries -----------------------------------------------------------------

    async def add_deliveries(self, subscription_id: str, items: Sequence[tuple[int, str]]) -> None:
        if not items:
            return
        await self._x.many(
            ADD_DELIVERY,
            [{"sub_id": subscription_id, "seq": seq, "subject": subject} for seq, subject in items],
        )

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
    ) -> tuple[list[tuple[int, int]], list[int]]:
        """Lease up to ``limit`` visible deliveries that head their subject.

        A delivery whose subject has an earlier delivery still pending (in
        flight, or waiting for a retry) is not eligible: that is what keeps
        per-subject order with competing consumers. Events without a subject
        are not ordered, nor is anything when ``ordered`` is False. Returns
        (seq, attempt number) of what was leased, and the seqs found with
        no attempts left (for the dead letters).
        """
        params = {
            "sub_id": subscription_id,
            "now": now,
            "until": until,
            "consumer": consumer,
            "limit": limit,
            "max_attempts": max_attempts,
        }
        rows = await self._x.rows(self._claim[ordered], params)
        claimed = sorted((row.seq, row.attempts) for row in rows if row.consumer is not None)
        exhausted = sorted(row.seq for row in rows if row.consumer is None)
        return claimed, exhausted

    async def delivery(self, subscription_id: str, seq: int) -> tuple[int, str | None] | None:
        row = (
            await self._conn.execute(
                select(deliveries.c.attempts, deliveries.c.last_error).where(
                    deliveries.c.subscription_id == subscription_id, deliveries.c.seq == seq
                )
            )
        ).one_or_none()
        return None if row is None else (row.attempts, row.last_error)

    async def delete_deliveries(self, subscription_id: str, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        return await self._x.run(DELETE_DELIVERIES, {"sub_id": subscription_id, "seqs": seqs})

    async def retry_later(
        self, subscription_id: str, seq: int, visible_at: float, error: str
    ) -> None:
        await self._conn.execute(
            update(deliveries)
            .where(deliveries.c.subscription_id == subscription_id, deliveries.c.seq == seq)
            .values(visible_at=visible_at, last_error=error, consumer=None)
        )

    async def release(self, subscription_id: str, consumer: str, now: float) -> None:
        await self._conn.execute(
            update(deliveries)
            .where(
                deliveries.c.subscription_id == subscription_id,
                deliveries.c.consumer == consumer,
                deliveries.c.visible_at > now,
            )
            .values(visible_at=now, consumer=None)
        )

    async def bury(self, subscription_id: str, seqs: Sequence[int], error: str, at: float) -> None:
        """Move deliveries to the dead-letter store, keeping attempts and the last error."""
        d = deliveries.c
        rows = (
            await self._conn.execute(
                select(d.seq, d.attempts, d.last_error).where(
                    d.subscription_id == subscription_id, d.seq.in_(seqs)
                )
            )
        ).all()
        if not rows:
            return
        await self._conn.execute(
            INSERT_DEAD_LETTERS,
            [
                {
                    "subscription_id": subscription_id,
                    "seq": row.seq,
                    "attempts": row.attempts,
                    "last_error": error or row.last_error,
                    "dead_at": at,
                }
                for row in rows
            ],
        )
        await self.delete_deliveries(subscription_id, [row.seq for row in rows])

    # --- dead letters -----------------------------------------------------------------

    async def dead_letters(self, sub: Subscription, after_seq: int, limit: int) -> list[DeadLetter]:
        width = len(EVENT_ROW)
        rows = await self._conn.execute(
            select(
                events, dead_letters.c.attempts, dead_letters.c.last_error, dead_letters.c.dead_at
            )
            .join(dead_letters, events.c.seq == dead_letters.c.seq)
            .where(dead_letters.c.subscription_id == sub.id, dead_letters.c.seq > after_seq)
            .order_by(dead_letters.c.seq)
            .limit(limit)
        )
        return [
            DeadLetter(
                sub.name, to_event(row[:width]), row.attempts, row.last_error or "", row.dead_at
            )
            for row in rows
        ]

    async def redrive(self, sub: Subscription, seqs: Sequence[int] | None) -> int:
        """Move dead letters (all, or the given seqs) back to pending deliveries."""
        query = (
            select(dead_letters.c.seq, events.c.subject)
            .join(events, events.c.seq == dead_letters.c.seq)
            .where(dead_letters.c.subscription_id == sub.id)
        )
        if seqs:
            query = query.where(dead_letters.c.seq.in_(seqs))
        rows = (await self._conn.execute(query)).all()
        if not rows:
            return 0
        await self.add_deliveries(sub.id, [(row.seq, row.subject) for row in rows])
        await self._conn.execute(
            delete(dead_letters).where(
                dead_letters.c.subscription_id == sub.id,
                dead_letters.c.seq.in_([row.seq for row in rows]),
            )
        )
        return len(rows)
