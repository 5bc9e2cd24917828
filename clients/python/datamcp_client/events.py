"""``client.events``: publish, subscribe with acks, replay (EventService).

Example:
    await client.events.publish("order.paid", {"id": 7}, subject="order-7")
    async with client.events.subscribe("billing", types=["order.*"]) as sub:
        async for delivery in sub:
            print(delivery.event.data)
            await delivery.ack()
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from grpc import aio

from datamcp.v1 import events_pb2, events_pb2_grpc
from datamcp_client._rpc import (
    Connection,
    fill_duration,
    fill_timestamp,
    paged,
    to_datetime,
    to_seconds,
)
from datamcp_client._values import JSON, fill_value, from_value
from datamcp_client.errors import from_rpc_error

DEFAULT_SOURCE = "/datamcp-client"


_UNSET: Any = object()


class Event:
    """A stored CloudEvent. ``data`` is plain JSON.

    A read-only view over the message: ``data`` and ``time`` are converted
    when first read, so a consumer that only acks pays for nothing else.
    """

    __slots__ = ("_data", "_e")

    FIELDS = (
        "id",
        "type",
        "source",
        "subject",
        "data",
        "time",
        "sequence",
        "tenant",
        "correlation_id",
        "traceparent",
    )

    def __init__(self, proto: events_pb2.CloudEvent) -> None:
        self._e = proto
        self._data: JSON = _UNSET

    @classmethod
    def from_proto(cls, e: events_pb2.CloudEvent) -> Event:
        return cls(e)

    def to_proto(self) -> events_pb2.CloudEvent:
        return self._e

    @property
    def id(self) -> str:
        return self._e.id

    @property
    def type(self) -> str:
        return self._e.type

    @property
    def source(self) -> str:
        return self._e.source

    @property
    def subject(self) -> str:
        return self._e.subject

    @property
    def data(self) -> JSON:
        if self._data is _UNSET:
            self._data = from_value(self._e.data)
        return self._data

    @property
    def time(self) -> datetime | None:
        return to_datetime(self._e.time)

    @property
    def sequence(self) -> int:
        return self._e.sequence

    @property
    def tenant(self) -> str:
        return self._e.tenant

    @property
    def correlation_id(self) -> str:
        return self._e.correlation_id

    @property
    def traceparent(self) -> str:
        return self._e.traceparent

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other._e == self._e

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Event(sequence={self.sequence}, type={self.type!r}, subject={self.subject!r})"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to publish. ``id`` is generated when None (so a retry is a no-op)."""

    type: str
    data: JSON = None
    source: str = DEFAULT_SOURCE
    subject: str = ""
    id: str | None = None
    correlation_id: str = ""
    time: datetime | None = None

    def to_proto(self) -> events_pb2.CloudEvent:
        event = events_pb2.CloudEvent(
            id=self.id or uuid.uuid4().hex,
            type=self.type,
            source=self.source,
            subject=self.subject,
            correlation_id=self.correlation_id,
        )
        fill_value(event.data, self.data)
        if self.time is not None:
            fill_timestamp(event.time, self.time)
        return event


@dataclass(frozen=True, slots=True)
class PublishResult:
    id: str
    sequence: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    """A durable subscription and its progress."""

    name: str
    types: tuple[str, ...]
    source: str
    subject: str
    cursor: int
    lag: int
    pending: int
    in_flight: int
    dead_letters: int
    max_attempts: int
    visibility_timeout: float
    create_time: datetime | None

    @classmethod
    def from_proto(cls, s: events_pb2.Subscription) -> SubscriptionInfo:
        return cls(
            name=s.name,
            types=tuple(s.filter.types),
            source=s.filter.source,
            subject=s.filter.subject,
            cursor=s.cursor,
            lag=s.lag,
            pending=s.pending,
            in_flight=s.in_flight,
            dead_letters=s.dead_letters,
            max_attempts=s.max_attempts,
            visibility_timeout=to_seconds(s.visibility_timeout),
            create_time=to_datetime(s.create_time),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    subscription: str
    event: Event
    attempts: int
    last_error: str
    dead_time: datetime | None


@dataclass(slots=True)
class Delivery:
    """One event handed to this consumer; settle it with :meth:`ack` or :meth:`nack`."""

    event: Event
    attempt: int
    _subscription: Subscription = field(repr=False)
    settled: bool = False

    async def ack(self) -> None:
        """Done with it: it will not be delivered again."""
        if not self.settled:
            self.settled = True
            await self._subscription._write(
                events_pb2.SubscribeRequest(
                    ack=events_pb2.SubscribeRequest.Ack(sequences=[self.event.sequence])
                )
            )

    async def nack(self, error: str = "", *, retry_after: float | None = None) -> None:
        """Failed: deliver again later (backoff, or ``retry_after`` seconds), or
        dead-letter it once its attempts are used up."""
        if not self.settled:
            self.settled = True
            nack = events_pb2.SubscribeRequest.Nack(sequence=self.event.sequence, error=error)
            if retry_after is not None:
                fill_duration(nack.retry_after, retry_after)
            await self._subscription._write(events_pb2.SubscribeRequest(nack=nack))


class Subscription:
    """A live stream of a durable subscription: an async iterator of deliveries.

    Use it as ``async with`` (the stream closes on exit) or iterate it
    directly. With ``auto_ack`` every delivery is acked when the loop asks
    for the next one, i.e. once the loop body finished without raising.
    Unsettled deliveries come back after the visibility timeout, or at once
    when the stream closes.
    """

    def __init__(
        self,
        stub: events_pb2_grpc.EventServiceStub,
        connection: Connection,
        open_: events_pb2.SubscribeRequest,
        auto_ack: bool,
    ) -> None:
        self._stub = stub
        self._conn = connection
        self._open = open_
        self._auto_ack = auto_ack
        self._call: (
            aio.StreamStreamCall[events_pb2.SubscribeRequest, events_pb2.SubscribeResponse] | None
        ) = None
        self._lock = asyncio.Lock()
        self._last: Delivery | None = None
        self.info: SubscriptionInfo | None = None
        """The subscription's state when the stream opened."""

    async def open(self) -> Subscription:
        """Open the stream (done by the first iteration when not called)."""
        if self._call is None:
            self._call = self._stub.Subscribe(metadata=self._conn.metadata)
            try:
                await self._call.write(self._open)
                first = await self._call.read()
            except aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
            if first is aio.EOF or not first.HasField("subscribed"):
                raise from_rpc_error(await _ended(self._call))
            self.info = SubscriptionInfo.from_proto(first.subscribed)
        return self

    async def _write(self, request: events_pb2.SubscribeRequest) -> None:
        assert self._call is not None
        # One write at a time on a stream (deliveries may be acked from
        # several tasks); acquire/release rather than `async with`, which
        # adds two coroutine frames to every ack.
        await self._lock.acquire()
        try:
            await self._call.write(request)
        except aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            self._lock.release()

    async def flow(self, credits: int) -> None:
        """Allow ``credits`` more unacknowledged deliveries."""
        await self._write(
            events_pb2.SubscribeRequest(flow=events_pb2.SubscribeRequest.Flow(credits=credits))
        )

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        if self._call is None:
            await self.open()
        assert self._call is not None
        if self._auto_ack and self._last is not None:
            await self._last.ack()
        try:
            response = await self._call.read()
        except aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        if response is aio.EOF:
            raise StopAsyncIteration
        item = response.delivery
        self._last = Delivery(Event.from_proto(item.event), item.attempt, self)
        return self._last

    async def close(self) -> None:
        """Close the stream; unsettled deliveries are released to other consumers."""
        if self._call is not None:
            call, self._call = self._call, None
            call.cancel()

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _ended(
    call: aio.StreamStreamCall[events_pb2.SubscribeRequest, events_pb2.SubscribeResponse],
) -> aio.AioRpcError:
    code = await call.code()
    return aio.AioRpcError(
        code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
    )


def _filter(types: Iterable[str], source: str, subject: str) -> events_pb2.EventFilter:
    return events_pb2.EventFilter(types=list(types), source=source, subject=subject)


class EventsClient:
    """The event bus. Reached as ``client.events``."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._stub = events_pb2_grpc.EventServiceStub(connection.channel)

    async def publish(
        self,
        type: str,
        data: JSON = None,
        *,
        source: str = DEFAULT_SOURCE,
        subject: str = "",
        id: str | None = None,
        correlation_id: str = "",
        time: datetime | None = None,
    ) -> PublishResult:
        """Store one event. Its ``id`` is generated when None; publishing an id
        already stored is a no-op answered with ``duplicate=True``."""
        event = NewEvent(type, data, source, subject, id, correlation_id, time).to_proto()
        r = await self._conn.unary(
            self._stub.Publish, events_pb2.PublishRequest(event=event), idempotent=True
        )
        return PublishResult(r.id, r.sequence, r.duplicate)

    async def publish_batch(
        self, events: Iterable[NewEvent], *, batch_size: int = 500
    ) -> list[PublishResult]:
        """Store many events, ``batch_size`` per call (each call all or nothing).

        Every event gets an id before the first call, so retrying a batch,
        or the whole method, stores nothing twice.
        """
        protos = [e.to_proto() for e in events]
        results: list[PublishResult] = []
        for start in range(0, len(protos), batch_size):
            request = events_pb2.PublishBatchRequest(events=protos[start : start + batch_size])
            response = await self._conn.unary(self._stub.PublishBatch, request, idempotent=True)
            results += [PublishResult(r.id, r.sequence, r.duplicate) for r in response.results]
        return results

    def subscribe(
        self,
        subscription: str,
        *,
        types: Sequence[str] = (),
        source: str = "",
        subject: str = "",
        start: Literal["latest", "earliest"] = "latest",
        max_in_flight: int = 100,
        visibility_timeout: float | None = None,
        max_attempts: int = 0,
        auto_ack: bool = False,
    ) -> Subscription:
        """Consume a durable subscription, creating it when it does not exist.

        Args:
            subscription: its name; several consumers of one name share the work.
            types, source, subject: the filter (only used to create it).
            start: where a new subscription starts.
            max_in_flight: most unacknowledged deliveries at once.
            visibility_timeout: seconds before an unsettled delivery comes back.
            max_attempts: deliveries before dead-lettering (0: server default).
            auto_ack: ack each delivery when the next one is asked for.
        """
        open_ = events_pb2.SubscribeRequest.Open(
            subscription=subscription,
            max_in_flight=max_in_flight,
            start_position=(
                events_pb2.START_POSITION_EARLIEST
                if start == "earliest"
                else events_pb2.START_POSITION_LATEST
            ),
            max_attempts=max_attempts,
        )
        if types or source or subject:  # no filter: open an existing subscription as it is
            open_.filter.CopyFrom(_filter(types, source, subject))
        if visibility_timeout is not None:
            fill_duration(open_.visibility_timeout, visibility_timeout)
        return Subscription(
            self._stub, self._conn, events_pb2.SubscribeRequest(open=open_), auto_ack
        )

    async def replay(
        self,
        *,
        types: Sequence[str] = (),
        source: str = "",
        subject: str = "",
        from_sequence: int = 0,
        from_time: datetime | None = None,
        limit: int = 0,
    ) -> AsyncIterator[Event]:
        """Stored events in order, from a sequence number or a time (no subscription)."""
        request = events_pb2.ReplayRequest(
            filter=_filter(types, source, subject), from_sequence=from_sequence, limit=limit
        )
        if from_time is not None:
            fill_timestamp(request.from_time, from_time)
        call = self._stub.Replay(request, metadata=self._conn.metadata)
        async for item in self._conn.stream(call):
            yield Event.from_proto(item.event)

    def subscriptions(self, *, limit: int | None = None) -> AsyncIterator[SubscriptionInfo]:
        """The tenant's subscriptions with their lag."""

        async def fetch(token: str) -> tuple[list[SubscriptionInfo], str]:
            r = await self._conn.unary(
                self._stub.ListSubscriptions,
                events_pb2.ListSubscriptionsRequest(page_token=token),
                idempotent=True,
            )
            return [SubscriptionInfo.from_proto(s) for s in r.subscriptions], r.next_page_token

        return paged(fetch, limit)

    async def delete_subscription(self, subscription: str) -> tuple[int, int]:
        """Delete a subscription; answers (dropped deliveries, dropped dead letters)."""
        r = await self._conn.unary(
            self._stub.DeleteSubscription,
            events_pb2.DeleteSubscriptionRequest(subscription=subscription),
            idempotent=False,
        )
        return r.dropped_deliveries, r.dropped_dead_letters

    def dead_letters(
        self, subscription: str, *, limit: int | None = None
    ) -> AsyncIterator[DeadLetter]:
        """Events the subscription gave up on, with the last error."""

        async def fetch(token: str) -> tuple[list[DeadLetter], str]:
            r = await self._conn.unary(
                self._stub.ListDeadLetters,
                events_pb2.ListDeadLettersRequest(subscription=subscription, page_token=token),
                idempotent=True,
            )
            letters = [
                DeadLetter(
                    d.subscription,
                    Event.from_proto(d.event),
                    d.attempts,
                    d.last_error,
                    to_datetime(d.dead_time),
                )
                for d in r.dead_letters
            ]
            return letters, r.next_page_token

        return paged(fetch, limit)

    async def redrive(self, subscription: str, sequences: Iterable[int] = ()) -> int:
        """Move dead letters (all when ``sequences`` is empty) back for delivery."""
        r = await self._conn.unary(
            self._stub.RedriveDeadLetters,
            events_pb2.RedriveDeadLettersRequest(
                subscription=subscription, sequences=list(sequences)
            ),
            idempotent=True,
        )
        return int(r.redriven)
