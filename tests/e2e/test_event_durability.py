"""A server killed with SIGKILL loses no published event and every subscription
resumes from its cursor after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc import aio

from datamcp.v1 import events_pb2, events_pb2_grpc
from tests.events_client import Subscriber, cloud_event
from tests.support import server_process

ENV = {"DATAMCP_EVENTS_VISIBILITY_TIMEOUT": "1"}


async def _lag(stub: events_pb2_grpc.EventServiceStub) -> int:
    listed = await stub.ListSubscriptions(events_pb2.ListSubscriptionsRequest())
    return listed.subscriptions[0].lag


async def test_sigkill_loses_no_event_and_subscriptions_resume(tmp_path: Path) -> None:
    args = ("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))
    with server_process(*args, env=ENV) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            sub = Subscriber(channel)
            await sub.open("durable", ["task.*"], credits=30)
            published = []
            for chunk in range(4):
                batch = [
                    cloud_event(subject=f"k{chunk}-{i}", id_=f"e{chunk}-{i}") for i in range(25)
                ]
                reply = await stub.PublishBatch(events_pb2.PublishBatchRequest(events=batch))
                published += [r.sequence for r in reply.results]
            taken = await sub.take(30)
            acked = {d.event.sequence for d in taken}
            await sub.ack(*acked)
            for _ in range(50):
                if await _lag(stub) == 70:
                    break
                await asyncio.sleep(0.1)
            assert await _lag(stub) == 70
            server.proc.kill()  # SIGKILL: no shutdown code runs
            assert server.proc.wait(10) == -9
            sub.close()

    with server_process(*args, env=ENV) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            replayed = [r.event async for r in stub.Replay(events_pb2.ReplayRequest())]
            sub = Subscriber(channel)
            await sub.open("durable", credits=100)
            redelivered = await sub.take(70, timeout=10)
            await sub.ack(*(d.event.sequence for d in redelivered))
            assert await sub.nothing_for(1.5)  # acked ones never come back
            sub.close()
        assert server.stop() == 0
    assert [e.sequence for e in replayed] == published
    assert len({e.id for e in replayed}) == 100
    remaining = {d.event.sequence for d in redelivered}
    assert remaining == set(published) - acked
    assert len(redelivered) == 70
