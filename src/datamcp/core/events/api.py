"""What entry points call: publish with validation and limits, subscription
consumers, replay, listings with paging, dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from datamcp.core import paging
from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.events.bus import EventBus, PublishResult
from datamcp.core.events.consumer import Consumer
from datamcp.core.events.model import (
    DeadLetter,
    Event,
    EventFilter,
    Subscription,
    SubscriptionStats,
    new_event,
)
from datamcp.core.events.subscriptions import SubscriptionService

DEFAULT_CREDITS = 100
MAX_CREDITS = 10_000
#: Longest error text a nack stores with a delivery (longer text is cut).
MAX_NACK_ERROR = 2048


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event as a producer describes it, before validation."""

    type: str
    source: str
    data: Any = None
    subject: str = ""
    id: str = ""
    time: float | None = None
    correlation_id: str = ""
    traceparent: str = ""


class EventsApi:
    def __init__(
        self,
        bus: EventBus,
        subscriptions: SubscriptionService,
        *,
        max_event_bytes: int,
        max_batch: int,
        poll_interval: float = 0.25,
    ) -> None:
        self.bus = bus
        self.subscriptions = subscriptions
        self._max_bytes = max_event_bytes
        self._max_batch = max_batch
        #: A consumer's store read when nothing woke it (retries coming due).
        self.poll_interval = poll_interval

    async def publish(self, tenant: str, drafts: Sequence[EventDraft]) -> list[PublishResult]:
        """Validate every draft, then store them all in one transaction.

        Raises:
            InvalidArgument: any draft is invalid (violations name ``events[i].field``),
                or the batch is empty or too large. Nothing is stored.
        """
        if not drafts or len(drafts) > self._max_batch:
            raise InvalidArgument(
                f"a batch holds 1 to {self._max_batch} events, got {len(drafts)}",
                [FieldViolation("events", f"1 to {self._max_batch} events")],
                reason="BATCH_SIZE",
            )
        events: list[Event] = []
        violations: list[FieldViolation] = []
        for i, d in enumerate(drafts):
            prefix = f"events[{i}]." if len(drafts) > 1 else "event."
            try:
                events.append(
                    new_event(
                        type=d.type,
                        source=d.source,
                        data=d.data,
                        subject=d.subject,
                        tenant=tenant,
                        id=d.id or None,
                        time_=d.time,
                        correlation_id=d.correlation_id,
                        traceparent=d.traceparent,
                        max_data_bytes=self._max_bytes,
                        field_prefix=prefix,
                    )
                )
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        if violations:
            raise InvalidArgument(
                "invalid event(s); nothing was stored", violations, reason="INVALID_EVENT"
            )
        return await self.bus.publish(events)

    async def open_consumer(
        self,
        tenant: str,
        name: str,
        event_filter: EventFilter | None,
        *,
        credits: int = 0,
        from_earliest: bool = False,
        visibility_timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> Consumer:
        if credits < 0 or credits > MAX_CREDITS:
            raise InvalidArgument(
                "invalid max_in_flight",
                [FieldViolation("open.max_in_flight", f"0 to {MAX_CREDITS} (0 = default)")],
            )
        sub = await self.subscriptions.ensure(
            tenant,
            name,
            event_filter,
            from_earliest=from_earliest,
            max_attempts=max_attempts or None,
            visibility_timeout=visibility_timeout or None,
        )
        return Consumer(
            self.subscriptions,
            self.bus,
            sub,
            credits=credits or DEFAULT_CREDITS,
            poll_interval=self.poll_interval,
        )

    def replay(
        self,
        tenant: str,
        event_filter: EventFilter,
        *,
        from_seq: int,
        from_time: float | None,
        limit: int,
    ) -> AsyncIterator[Event]:
        if from_seq < 0 or limit < 0:
            raise InvalidArgument(
                "invalid replay range",
                [FieldViolation("from_sequence", ">= 0"), FieldViolation("limit", ">= 0")],
            )
        return self.bus.replay(
            tenant, event_filter, from_seq=from_seq, from_time=from_time, limit=limit or None
        )

    async def subscription_state(self, sub: Subscription) -> tuple[Subscription, SubscriptionStats]:
        """One subscription with its current stats."""
        return await self.subscriptions.with_stats(sub)

    async def list_subscriptions(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[tuple[Subscription, SubscriptionStats]], str]:
        size = paging.page_size(page_size)
        after = paging.after_text(page_token)
        page = await self.subscriptions.list_with_stats(tenant, after, size)
        token = paging.encode(page[-1][0].name) if len(page) == size else ""
        return page, token

    async def dead_letters(
        self,
        tenant: str,
        name: str,
        page_size: int,
        page_token: str,
        fits: paging.Fits | None = None,
    ) -> tuple[list[DeadLetter], str]:
        """A page of a subscription's dead letters (``fits``: see :func:`paging.fill`)."""
        size = paging.page_size(page_size)
        after_seq = paging.after_number(page_token)
        found = await self.subscriptions.dead_letters(tenant, name, after_seq, size)
        page, more = paging.fill(found, len(found) == size, fits)
        token = paging.encode(page[-1].event.seq) if more and page else ""
        return page, token

    async def delete_subscription(self, tenant: str, name: str) -> tuple[int, int]:
        return await self.subscriptions.delete(tenant, name)

    async def redrive(self, tenant: str, name: str, seqs: Sequence[int]) -> int:
        return await self.subscriptions.redrive(tenant, name, list(seqs) or None)
