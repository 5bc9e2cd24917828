"""datamcp.v1.EventService: translate, delegate to core.events, translate back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio

from datamcp.core.context import current_tenant
from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.events.api import MAX_NACK_ERROR, EventsApi
from datamcp.core.events.bus import PublishResult
from datamcp.core.events.consumer import Consumer
from datamcp.entrypoints.grpc.convert import Packer, epoch_of, page_bytes, seconds_of
from datamcp.entrypoints.grpc.event_convert import (
    dead_letter_to_proto,
    draft_from_proto,
    event_to_proto,
    filter_from_proto,
    subscription_to_proto,
)
from datamcp.v1 import events_pb2, events_pb2_grpc

Open = events_pb2.SubscribeRequest.Open


def _result(r: PublishResult) -> events_pb2.PublishResponse:
    return events_pb2.PublishResponse(id=r.event.id, sequence=r.seq, duplicate=r.duplicate)


class EventService(events_pb2_grpc.EventServiceServicer):
    """Args:
    api: the core's events API.
    page_bytes: most bytes the items of one answer take (``convert.page_bytes``).
    """

    def __init__(self, api: EventsApi, page_bytes: int = page_bytes(4 << 20)) -> None:
        self._api = api
        self._page_bytes = page_bytes

    async def Publish(
        self, request: events_pb2.PublishRequest, context: aio.ServicerContext
    ) -> events_pb2.PublishResponse:
        tenant = current_tenant()
        (result,) = await self._api.publish(tenant, [draft_from_proto(request.event)])
        return _result(result)

    async def PublishBatch(
        self, request: events_pb2.PublishBatchRequest, context: aio.ServicerContext
    ) -> events_pb2.PublishBatchResponse:
        tenant = current_tenant()
        many = len(request.events) > 1
        drafts = [
            draft_from_proto(e, f"events[{i}]." if many else "event.")
            for i, e in enumerate(request.events)
        ]
        results = await self._api.publish(tenant, drafts)
        return events_pb2.PublishBatchResponse(results=[_result(r) for r in results])

    async def Subscribe(
        self,
        request_iterator: AsyncIterator[events_pb2.SubscribeRequest],
        context: aio.ServicerContext,
    ) -> AsyncIterator[events_pb2.SubscribeResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "open":
            raise InvalidArgument(
                "the first Subscribe message must be 'open'",
                [FieldViolation("open", "required as the first message")],
            )
        consumer = await self._open(first.open)
        subscribed = await self._api.subscription_state(consumer.subscription)
        yield events_pb2.SubscribeResponse(subscribed=subscription_to_proto(*subscribed))
        reader = asyncio.create_task(self._read_commands(request_iterator, consumer))
        try:
            async for delivery in consumer.deliveries():
                # A client that half-closed (grpcurl does after 'open') still
                # receives deliveries; a failed command (bad ack) ends the call.
                if reader.done() and (error := reader.exception()) is not None:
                    raise error
                yield events_pb2.SubscribeResponse(
                    delivery=events_pb2.SubscribeResponse.Delivery(
                        event=event_to_proto(delivery.event), attempt=delivery.attempt
                    )
                )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await asyncio.shield(consumer.close())

    async def _open(self, request: Open) -> Consumer:
        tenant = current_tenant()
        has_filter = request.HasField("filter")
        return await self._api.open_consumer(
            tenant,
            request.subscription,
            filter_from_proto(request.filter, "open.filter.") if has_filter else None,
            credits=request.max_in_flight,
            from_earliest=request.start_position == events_pb2.START_POSITION_EARLIEST,
            visibility_timeout=seconds_of(request.visibility_timeout, "open.visibility_timeout"),
            max_attempts=request.max_attempts,
        )

    async def _read_commands(
        self, requests: AsyncIterator[events_pb2.SubscribeRequest], consumer: Consumer
    ) -> None:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "ack":
                await consumer.ack(list(message.ack.sequences))
            elif kind == "nack":
                nack = message.nack
                await consumer.nack(
                    nack.sequence,
                    nack.error[:MAX_NACK_ERROR],
                    seconds_of(nack.retry_after, "nack.retry_after")
                    if nack.HasField("retry_after")
                    else None,
                )
            elif kind == "flow":
                consumer.grant(message.flow.credits)

    async def Replay(
        self, request: events_pb2.ReplayRequest, context: aio.ServicerContext
    ) -> AsyncIterator[events_pb2.ReplayResponse]:
        tenant = current_tenant()
        from_time = (
            epoch_of(request.from_time, "from_time") if request.HasField("from_time") else None
        )
        events = self._api.replay(
            tenant,
            filter_from_proto(request.filter),
            from_seq=request.from_sequence,
            from_time=from_time,
            limit=request.limit,
        )
        async for event in events:
            yield events_pb2.ReplayResponse(event=event_to_proto(event))

    async def ListSubscriptions(
        self, request: events_pb2.ListSubscriptionsRequest, context: aio.ServicerContext
    ) -> events_pb2.ListSubscriptionsResponse:
        tenant = current_tenant()
        page, token = await self._api.list_subscriptions(
            tenant, request.page_size, request.page_token
        )
        return events_pb2.ListSubscriptionsResponse(
            subscriptions=[subscription_to_proto(s, st) for s, st in page], next_page_token=token
        )

    async def DeleteSubscription(
        self, request: events_pb2.DeleteSubscriptionRequest, context: aio.ServicerContext
    ) -> events_pb2.DeleteSubscriptionResponse:
        tenant = current_tenant()
        deliveries, dead = await self._api.delete_subscription(tenant, request.subscription)
        return events_pb2.DeleteSubscriptionResponse(
            dropped_deliveries=deliveries, dropped_dead_letters=dead
        )

    async def ListDeadLetters(
        self, request: events_pb2.ListDeadLettersRequest, context: aio.ServicerContext
    ) -> events_pb2.ListDeadLettersResponse:
        tenant = current_tenant()
        page = Packer(dead_letter_to_proto, self._page_bytes)
        _, token = await self._api.dead_letters(
            tenant, request.subscription, request.page_size, request.page_token, page
        )
        return events_pb2.ListDeadLettersResponse(dead_letters=page.messages, next_page_token=token)

    async def RedriveDeadLetters(
        self, request: events_pb2.RedriveDeadLettersRequest, context: aio.ServicerContext
    ) -> events_pb2.RedriveDeadLettersResponse:
        tenant = current_tenant()
        moved = await self._api.redrive(tenant, request.subscription, list(request.sequences))
        return events_pb2.RedriveDeadLettersResponse(redriven=moved)
