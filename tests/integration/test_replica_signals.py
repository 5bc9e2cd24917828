"""Replicas on one PostgreSQL database wake each other: a commit on one
reaches consumers and watchers on another by push (LISTEN/NOTIFY), not by
their fallback poll, which these tests set far longer than they allow."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)
from tests.agent_plugins import PLUGINS, SlowAgent
from tests.events_client import Subscriber, cloud_event
from tests.integration.test_agents import spec
from tests.support import API_KEY, apikey, auth_overrides, make_settings, running_server

#: Fallback poll of consumers: a delivery faster than this came by push.
SLOW_POLL = 10.0


@pytest.mark.pg
async def test_a_publish_on_one_replica_wakes_a_consumer_on_another(
    tmp_path: Path, pg_database: str
) -> None:
    settings = {"events.poll_interval": SLOW_POLL}
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        sub = Subscriber(ch2)
        await sub.open("orders", ["order.*"], credits=10)
        await asyncio.sleep(0.5)  # the consumer's first look is done: now it waits
        stub = events_pb2_grpc.EventServiceStub(ch1)
        for i in range(5):
            started = time.monotonic()
            await stub.Publish(
                events_pb2.PublishRequest(event=cloud_event("order.placed", f"o{i}", {"i": i}))
            )
            delivery = await sub.next(timeout=SLOW_POLL / 2)
            assert delivery.event.subject == f"o{i}"
            assert time.monotonic() - started < SLOW_POLL / 2
            await sub.ack(delivery.event.sequence)
        sub.close()


@pytest.mark.pg
async def test_watch_task_on_another_replica_follows_by_push(
    tmp_path: Path, pg_database: str
) -> None:
    settings = {"agents.plugins": PLUGINS, "rate_limit.enabled": False}
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        submit = agents_pb2_grpc.AgentServiceStub(ch1)
        watch = agents_pb2_grpc.AgentServiceStub(ch2)
        started = time.monotonic()
        task = (
            await submit.SubmitTask(
                agents_pb2.SubmitTaskRequest(task=spec("test.slow", {"seconds": 1.0}))
            )
        ).task
        states = []
        async for update in watch.WatchTask(agents_pb2.WatchTaskRequest(id=task.id), timeout=20):
            states.append(update.task.state)
        elapsed = time.monotonic() - started
    assert states[-1] == agents_pb2.TASK_STATE_SUCCEEDED
    # The watcher's fallback poll is 5 s: the end came by push.
    assert elapsed < 1.0 + 2.5, states


@pytest.mark.pg
async def test_a_rate_limit_holds_across_replicas(tmp_path: Path, pg_database: str) -> None:
    """One principal calling two replicas in turn gets one quota, not two."""
    rate, burst, seconds = 20.0, 10, 3.0
    settings = {**auth_overrides(), "rate_limit.rate": rate, "rate_limit.burst": burst}
    admitted = 0
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        stubs = [health_pb2_grpc.HealthServiceStub(ch) for ch in (ch1, ch2)]
        request = health_pb2.GetHealthReportRequest()
        end = time.monotonic() + seconds
        calls = 0
        while time.monotonic() < end:
            try:
                await stubs[calls % 2].GetHealthReport(request, metadata=apikey(API_KEY))
                admitted += 1
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            calls += 1
            await asyncio.sleep(0.005)
    one_process = burst + rate * seconds  # what one replica alone admits
    assert calls > 2 * one_process  # the limit was really pressed
    assert admitted <= 1.1 * one_process, (admitted, calls)


@pytest.mark.pg
async def test_competing_consumers_on_two_replicas_get_each_event_once(
    tmp_path: Path, pg_database: str
) -> None:
    """Four consumers on each replica, acking at once: with nothing failing,
    no event is delivered twice (materialisers of one page must not both
    insert its deliveries)."""
    total = 3000
    async with (
        running_server(make_settings(tmp_path / "a", pg_database)) as one,
        running_server(make_settings(tmp_path / "b", pg_database)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        subs = [Subscriber(ch) for ch in (ch1, ch2) for _ in range(4)]
        await subs[0].open("load", ["load.*"], credits=50)
        for sub in subs[1:]:
            await sub.open("load", credits=50)
        stub = events_pb2_grpc.EventServiceStub(ch1)
        for first in range(0, total, 500):
            batch = [cloud_event("load.tick", "", {"i": i}) for i in range(first, first + 500)]
            await stub.PublishBatch(events_pb2.PublishBatchRequest(events=batch))
        seen: list[tuple[int, int]] = []

        async def consume(sub: Subscriber) -> None:
            while len(seen) < total:
                try:
                    delivery = await sub.next(timeout=1.0)
                except TimeoutError:
                    continue
                seen.append((delivery.event.sequence, delivery.attempt))
                await sub.ack(delivery.event.sequence)

        await asyncio.wait_for(asyncio.gather(*(consume(s) for s in subs)), 120)
        await asyncio.sleep(1.0)  # anything delivered twice would show now
        for sub in subs:
            while not await sub.nothing_for(0.1):
                seen.append((-1, -1))
            sub.close()
    sequences = [seq for seq, _ in seen]
    assert len(sequences) == total, len(sequences) - total
    assert len(set(sequences)) == total


async def _task_events(stub: events_pb2_grpc.EventServiceStub, task_id: str) -> list[str]:
    replay = stub.Replay(events_pb2.ReplayRequest(filter=events_pb2.EventFilter(subject=task_id)))
    return [reply.event.type async for reply in replay]


@pytest.mark.pg
async def test_cancel_on_another_replica_reaches_the_running_agent_once(
    tmp_path: Path, pg_database: str
) -> None:
    settings = {"agents.plugins": PLUGINS, "rate_limit.enabled": False}
    SlowAgent.cancelled.clear()
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        on_a = agents_pb2_grpc.AgentServiceStub(ch1)
        on_b = agents_pb2_grpc.AgentServiceStub(ch2)
        # The slow agent runs one task at a time on each replica: the first
        # runs on A, the second on B (from the shared pool), the third waits.
        running, on_other, queued = [
            (
                await on_a.SubmitTask(
                    agents_pb2.SubmitTaskRequest(task=spec("test.slow", {"seconds": 30}))
                )
            ).task
            for _ in range(3)
        ]
        assert queued.state == agents_pb2.TASK_STATE_QUEUED
        async with asyncio.timeout(10):
            while (
                await on_b.GetTask(agents_pb2.GetTaskRequest(id=running.id))
            ).task.state != agents_pb2.TASK_STATE_RUNNING:
                await asyncio.sleep(0.05)
        for task in (queued, running):  # the queued one first: it must never start
            started = time.monotonic()
            answer = (await on_b.CancelTask(agents_pb2.CancelTaskRequest(id=task.id))).task
            assert answer.state == agents_pb2.TASK_STATE_CANCELLED
            assert time.monotonic() - started < 3.0
            seen_by_a = (await on_a.GetTask(agents_pb2.GetTaskRequest(id=task.id))).task
            assert seen_by_a.state == agents_pb2.TASK_STATE_CANCELLED
        assert running.id in SlowAgent.cancelled  # the agent itself was told
        await on_a.CancelTask(agents_pb2.CancelTaskRequest(id=on_other.id))
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await on_b.CancelTask(agents_pb2.CancelTaskRequest(id=running.id))
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await asyncio.sleep(0.5)  # anything late would have landed by now
        events = events_pb2_grpc.EventServiceStub(ch1)
        finals = {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}
        for task, started_ever in ((running, True), (queued, False)):
            types = await _task_events(events, task.id)
            assert [t for t in types if t in finals] == ["task.cancelled"], types
            assert ("task.started" in types) is started_ever, types


@pytest.mark.pg
async def test_memory_watch_on_another_replica_sees_every_version(
    tmp_path: Path, pg_database: str
) -> None:
    settings = {"memory.history_depth": 100, "rate_limit.enabled": False}
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        writer = memory_pb2_grpc.MemorySyncServiceStub(ch1)
        watcher = memory_pb2_grpc.MemorySyncServiceStub(ch2)
        call = watcher.WatchChanges(memory_pb2.WatchChangesRequest(namespace_prefix="w"))
        seen: list[tuple[str, float]] = []

        async def read(count: int) -> None:
            async for change in call:
                seen.append((change.record.key, from_value(change.record.value)))
                if len(seen) == count:
                    return

        reader = asyncio.create_task(read(40))
        await asyncio.sleep(0.3)
        # Two keys written in turn, faster than any poll: each version counts.
        for i in range(20):
            for key in ("x", "y"):
                await writer.Put(memory_pb2.PutRequest(namespace="w", key=key, value=to_value(i)))
        await asyncio.wait_for(reader, 15)
        call.cancel()
        assert seen == [(key, i) for i in range(20) for key in ("x", "y")]
        # A watcher started later replays the same log from the history.
        again = watcher.WatchChanges(memory_pb2.WatchChangesRequest(namespace_prefix="w"))
        try:
            replay = [await asyncio.wait_for(again.read(), 10) for _ in range(40)]
        finally:
            again.cancel()
        assert [(r.record.key, from_value(r.record.value)) for r in replay] == seen


@pytest.mark.pg
async def test_watch_run_on_another_replica_follows_by_push(
    tmp_path: Path, pg_database: str
) -> None:
    """A run on one replica, watched on another: its progress and end arrive
    by push (the watcher's fallback poll is 5 s)."""
    from datamcp.v1 import pipelines_pb2 as ppb
    from datamcp.v1 import pipelines_pb2_grpc as ppb_grpc

    data = tmp_path / "files"
    data.mkdir()
    (data / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(50_000)))
    settings = {"pipelines.data_roots": [str(data)], "rate_limit.enabled": False}
    spec = (
        "name: copy\nsource: {csv: {path: in.csv}}\n"
        "transforms: [{cast: {id: integer}}, {sort: [-id]}]\n"
        "destination: {jsonl: {path: out.jsonl}}\n"
    )
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        runner = ppb_grpc.PipelineServiceStub(ch1)
        watcher = ppb_grpc.PipelineServiceStub(ch2)
        await runner.CreatePipeline(ppb.CreatePipelineRequest(spec_text=spec))
        run = (await runner.RunPipeline(ppb.RunPipelineRequest(id="copy"))).run
        seen = []
        async for update in watcher.WatchRun(ppb.WatchRunRequest(id=run.id), timeout=30):
            seen.append((update.run.state, time.monotonic()))
        final = (await runner.GetRun(ppb.GetRunRequest(id=run.id))).run
    assert seen[-1][0] == ppb.RUN_STATE_SUCCEEDED
    # The watcher knew of the end soon after it was stored (wall clock of
    # both replicas: this host's).
    ended_at = final.end_time.seconds + final.end_time.nanos / 1e9
    known_at = time.time() - (time.monotonic() - seen[-1][1])
    assert known_at - ended_at < 2.5, (seen, known_at - ended_at)


@pytest.mark.pg
async def test_watch_sync_run_on_another_replica_follows_by_push(
    tmp_path: Path, pg_database: str
) -> None:
    """A memory sync run by one replica, watched on another: its end arrives
    by push (the watcher's fallback poll is 5 s)."""
    stores = [
        {"id": "main", "url": pg_database, "primary": True},
        {"id": "edge", "url": f"sqlite:///{tmp_path / 'edge.db'}"},
    ]
    settings = {"memory.stores": stores, "rate_limit.enabled": False}
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        runner = memory_pb2_grpc.MemorySyncServiceStub(ch1)
        watcher = memory_pb2_grpc.MemorySyncServiceStub(ch2)
        for chunk in range(10):  # enough to copy that the watcher waits for the end
            entries = [
                memory_pb2.PutEntry(namespace="n", key=f"k{chunk}-{i}", value=to_value(i))
                for i in range(1000)
            ]
            await runner.BatchPut(memory_pb2.BatchPutRequest(entries=entries))
        run = (await runner.Synchronize(memory_pb2.SynchronizeRequest(background=True))).run
        seen = []
        async for update in watcher.WatchSyncRun(
            memory_pb2.WatchSyncRunRequest(sync_id=run.sync_id), timeout=60
        ):
            seen.append((update.run.status, time.monotonic()))
        final = (await runner.GetSyncRun(memory_pb2.GetSyncRunRequest(sync_id=run.sync_id))).run
    assert seen[-1][0] == memory_pb2.SYNC_RUN_STATUS_SUCCEEDED, seen
    ended_at = final.end_time.seconds + final.end_time.nanos / 1e9
    known_at = time.time() - (time.monotonic() - seen[-1][1])
    assert seen[0][0] == memory_pb2.SYNC_RUN_STATUS_RUNNING  # it waited for the end
    assert known_at - ended_at < 2.5, (seen, known_at - ended_at)


@pytest.mark.pg
async def test_a_push_to_another_replica_reaches_the_jobs_owner_by_push(
    tmp_path: Path, pg_database: str
) -> None:
    """Records pushed to a replica that does not run the job are applied by
    its owner at once (woken by the commit's signal; its poll is 10 s)."""
    from tests.streams_client import Streams, job_spec, stream_server

    settings = {"rate_limit.enabled": False, "streams.poll_interval": 10.0}
    async with (
        stream_server(make_settings(tmp_path / "a", pg_database, **settings)) as first,
        stream_server(make_settings(tmp_path / "b", pg_database, **settings)) as second,
    ):
        one, two = Streams(first.channel()), Streams(second.channel())
        job = await one.create(job_spec(size=10))
        await asyncio.sleep(0.5)  # the owner's runner has looked once and waits
        assert job.id in first.server.app.streams.running
        for i in range(3):
            started = time.monotonic()
            await two.push(job.id, [[{"k": "a", "t": i + 1, "v": 1}]])
            await two.wait(job.id, timeout=5.0, records_accepted=i + 1)
            assert time.monotonic() - started < 5.0
        assert job.id not in second.server.app.streams.running
