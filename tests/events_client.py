"""Test helpers for EventService: event builders and a subscriber over the real stream."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format
from grpc import aio

from datamcp.v1 import events_pb2, events_pb2_grpc

Req = events_pb2.SubscribeRequest


def cloud_event(
    type_: str = "task.succeeded", subject: str = "", data: Any = None, id_: str = "", **kw: Any
) -> events_pb2.CloudEvent:
    event = events_pb2.CloudEvent(
        type=type_, source=kw.pop("source", "/tests"), subject=subject, id=id_, **kw
    )
    if data is not None:
        json_format.ParseDict(data, event.data)
    return event


class Subscriber:
    """One Subscribe stream: open, read deliveries, ack, nack, grant credits."""

    def __init__(self, channel: aio.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.call = events_pb2_grpc.EventServiceStub(channel).Subscribe(metadata=tuple(metadata))
        # Cancelling a pending read() cancels the whole call, so one task reads
        # and the test waits on a queue instead.
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not aio.EOF:
                self._inbox.put_nowait(message)
            self._inbox.put_nowait(aio.EOF)
        except BaseException as exc:  # the call's error, surfaced to the waiter
            self._inbox.put_nowait(exc)

    async def _get(self, timeout: float) -> Any:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def open(
        self,
        name: str,
        types: Sequence[str] | None = None,
        *,
        credits: int = 0,
        earliest: bool = False,
        visibility: float = 0.0,
        max_attempts: int = 0,
        subject: str = "",
    ) -> events_pb2.Subscription:
        open_ = Req.Open(subscription=name, max_in_flight=credits, max_attempts=max_attempts)
        if types is not None:
            open_.filter.CopyFrom(events_pb2.EventFilter(types=list(types), subject=subject))
        if earliest:
            open_.start_position = events_pb2.START_POSITION_EARLIEST
        if visibility:
            open_.visibility_timeout.CopyFrom(
                duration_pb2.Duration(nanos=int((visibility % 1) * 1e9), seconds=int(visibility))
            )
        await self.call.write(Req(open=open_))
        first = await self._get(10)
        return first.subscribed

    async def next(self, timeout: float = 5.0) -> events_pb2.SubscribeResponse.Delivery:
        message = await self._get(timeout)
        assert message is not aio.EOF, "stream ended"
        return message.delivery

    async def take(
        self, n: int, timeout: float = 10.0
    ) -> list[events_pb2.SubscribeResponse.Delivery]:
        return [await self.next(timeout) for _ in range(n)]

    async def nothing_for(self, seconds: float) -> bool:
        try:
            await self._get(seconds)
        except TimeoutError:
            return True
        return False

    async def ack(self, *seqs: int) -> None:
        await self.call.write(Req(ack=Req.Ack(sequences=list(seqs))))

    async def nack(self, seq: int, error: str, retry_after: float | None = None) -> None:
        nack = Req.Nack(sequence=seq, error=error)
        if retry_after is not None:
            nack.retry_after.FromNanoseconds(int(retry_after * 1e9))
        await self.call.write(Req(nack=nack))

    async def grant(self, credits: int) -> None:
        await self.call.write(Req(flow=Req.Flow(credits=credits)))

    async def error(self, timeout: float = 5.0) -> BaseException:
        """The error that ended the call (after a bad request)."""
        try:
            await self._get(timeout)
        except Exception as exc:
            return exc
        raise AssertionError("the call did not fail")

    def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()
