"""Two server replicas on one PostgreSQL database: consumers of one
subscription on both share the work, each event delivered and acked once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datamcp.v1 import events_pb2, events_pb2_grpc
from tests.events_client import Subscriber, cloud_event
from tests.support import make_settings, running_server


@pytest.mark.pg
async def test_competing_consumers_across_replicas_share_without_duplicates(
    tmp_path: Path, pg_database: str
) -> None:
    async with (
        running_server(make_settings(tmp_path / "a", pg_database)) as one,
        running_server(make_settings(tmp_path / "b", pg_database)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        subs = [Subscriber(ch1), Subscriber(ch2)]
        await subs[0].open("orders", ["order.*"], credits=10)
        await subs[1].open("orders", credits=10)
        stub = events_pb2_grpc.EventServiceStub(ch1)
        events = [cloud_event("order.placed", f"o{i}", {"i": i}) for i in range(200)]
        await stub.PublishBatch(events_pb2.PublishBatchRequest(events=events))
        seen: list[tuple[int, int]] = []

        async def work(index: int) -> None:
            while len(seen) < 200:
                try:
                    delivery = await subs[index].next(timeout=1.0)
                except TimeoutError:
                    continue
                seen.append((index, delivery.event.sequence))
                await asyncio.sleep(0.01)  # some work: the other replica's poll comes round
                await subs[index].ack(delivery.event.sequence)

        await asyncio.wait_for(asyncio.gather(work(0), work(1)), 60)
        assert await subs[0].nothing_for(0.5) and await subs[1].nothing_for(0.1)
        for sub in subs:
            sub.close()
    sequences = [seq for _, seq in seen]
    assert len(sequences) == 200 and len(set(sequences)) == 200
    assert {index for index, _ in seen} == {0, 1}


@pytest.mark.pg
async def test_concurrent_publishers_on_two_replicas_lose_nothing(
    tmp_path: Path, pg_database: str
) -> None:
    """Seqs commit in order across replicas, so a subscription reading between
    two commits never skips an event."""
    async with (
        running_server(make_settings(tmp_path / "a", pg_database)) as one,
        running_server(make_settings(tmp_path / "b", pg_database)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        sub = Subscriber(ch1)
        await sub.open("all", ["load.*"], credits=1000)
        stubs = [events_pb2_grpc.EventServiceStub(ch) for ch in (ch1, ch2)]

        async def publish(index: int) -> None:
            stub = stubs[index % 2]
            for batch in range(10):
                events = [cloud_event("load.tick", f"p{index}-{batch}-{i}") for i in range(5)]
                await stub.PublishBatch(events_pb2.PublishBatchRequest(events=events))

        received: set[int] = set()

        async def consume() -> None:
            while len(received) < 400:
                delivery = await sub.next(timeout=10)
                received.add(delivery.event.sequence)
                await sub.ack(delivery.event.sequence)

        consumer = asyncio.create_task(consume())
        await asyncio.gather(*(publish(i) for i in range(8)))
        await asyncio.wait_for(consumer, 60)
        sub.close()
    assert len(received) == 400
