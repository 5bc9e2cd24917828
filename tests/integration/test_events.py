"""EventService through the real server: publish, idempotency, atomic batches,
replay, durable subscriptions, redelivery, dead letters, competing consumers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from datamcp.v1 import events_pb2, events_pb2_grpc
from tests.events_client import Subscriber, cloud_event
from tests.support import (
    auth_overrides,
    bearer,
    hs256_token,
    make_settings,
    rich_details,
    running_server,
)


async def _replay(
    stub: events_pb2_grpc.EventServiceStub, **kw: object
) -> list[events_pb2.CloudEvent]:
    return [r.event async for r in stub.Replay(events_pb2.ReplayRequest(**kw))]


async def test_publish_is_idempotent_by_id(tmp_path: Path, database_url: str) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        event = cloud_event("task.succeeded", "task-1", {"n": 1, "ok": True}, id_="evt-1")
        first = await stub.Publish(events_pb2.PublishRequest(event=event))
        again = await stub.Publish(events_pb2.PublishRequest(event=event))
        generated = await stub.Publish(events_pb2.PublishRequest(event=cloud_event()))
        stored = await _replay(stub)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.sequence == again.sequence and first.id == "evt-1"
    assert generated.id and generated.sequence > first.sequence
    assert [e.id for e in stored] == ["evt-1", generated.id]
    assert json_format.MessageToDict(stored[0].data) == {"n": 1, "ok": True}
    assert stored[0].tenant == "default" and stored[0].HasField("time")


async def test_republished_ids_keep_their_sequence_in_batches_and_under_concurrency(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        first = await stub.PublishBatch(
            events_pb2.PublishBatchRequest(events=[cloud_event(id_=f"e{i}") for i in (1, 2)])
        )
        mixed = await stub.PublishBatch(
            events_pb2.PublishBatchRequest(
                events=[cloud_event(id_=i) for i in ("e2", "e3", "e1", "e3", "e4")]
            )
        )
        same = [cloud_event(id_="racer") for _ in range(20)]
        raced = await asyncio.gather(
            *(stub.Publish(events_pb2.PublishRequest(event=e)) for e in same)
        )
        single_again = await stub.Publish(events_pb2.PublishRequest(event=cloud_event(id_="e4")))
        stored = await _replay(stub)
    seq = {r.id: r.sequence for r in first.results}
    got = [(r.id, r.duplicate) for r in mixed.results]
    assert got == [("e2", True), ("e3", False), ("e1", True), ("e3", True), ("e4", False)]
    seq.update({r.id: r.sequence for r in mixed.results if not r.duplicate})
    assert all(r.sequence == seq[r.id] for r in mixed.results)
    assert sorted(r.duplicate for r in raced) == [False] + [True] * 19
    assert len({r.sequence for r in raced}) == 1
    assert single_again.duplicate and single_again.sequence == seq["e4"]
    assert [e.id for e in stored] == ["e1", "e2", "e3", "e4", "racer"]
    assert [e.sequence for e in stored][:4] == [seq[i] for i in ("e1", "e2", "e3", "e4")]


async def test_batch_is_all_or_nothing_with_field_violations(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **{"events.max_event_bytes": 1000})
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        bad = [cloud_event(), cloud_event("NotAType"), cloud_event(data={"x": "y" * 2000})]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PublishBatch(events_pb2.PublishBatchRequest(events=bad))
        assert await _replay(stub) == []
        good = [cloud_event(subject=f"s{i}") for i in range(20)]
        ok = await stub.PublishBatch(events_pb2.PublishBatchRequest(events=good))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in rich_details(err.value)["BadRequest"].field_violations}
    assert fields == {"events[1].type", "events[2].data"}
    seqs = [r.sequence for r in ok.results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20


async def test_replay_filters_by_type_prefix_sequence_and_time(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        types = ["pipeline.run.started", "task.failed", "pipeline.run.succeeded", "pipeline.x"]
        batch = [cloud_event(t) for t in types]
        results = (await stub.PublishBatch(events_pb2.PublishBatchRequest(events=batch))).results
        runs = await _replay(stub, filter=events_pb2.EventFilter(types=["pipeline.run.*"]))
        after = await _replay(stub, from_sequence=results[1].sequence)
        limited = await _replay(stub, limit=1)
        future = events_pb2.ReplayRequest()
        future.from_time.FromSeconds(int(time.time()) + 3600)
        none = [r async for r in stub.Replay(future)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _replay(stub, filter=events_pb2.EventFilter(types=["Bad*"]))
    assert [e.type for e in runs] == ["pipeline.run.started", "pipeline.run.succeeded"]
    assert [e.type for e in after] == types[2:]
    assert len(limited) == 1 and none == []
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tenants_only_see_their_own_events(tmp_path: Path) -> None:
    acme = bearer(hs256_token(tenant="acme"))
    globex = bearer(hs256_token(tenant="globex"))
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as ch:
            stub = events_pb2_grpc.EventServiceStub(ch)
            event = cloud_event(id_="same-id")
            a = await stub.Publish(events_pb2.PublishRequest(event=event), metadata=acme)
            g = await stub.Publish(events_pb2.PublishRequest(event=event), metadata=globex)
            seen = [r.event async for r in stub.Replay(events_pb2.ReplayRequest(), metadata=globex)]
            sub = Subscriber(ch, acme)
            await sub.open("audit", ["*"], earliest=True)
            delivered = await sub.next()
            assert await sub.nothing_for(0.5)
            sub.close()
            listed = await stub.ListSubscriptions(
                events_pb2.ListSubscriptionsRequest(), metadata=globex
            )
    assert not a.duplicate and not g.duplicate  # ids are unique per tenant
    assert [e.tenant for e in seen] == ["globex"]
    assert delivered.event.tenant == "acme"
    assert list(listed.subscriptions) == []


async def test_subscription_delivers_matching_events_in_order_and_tracks_lag(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        opened = await sub.open("runs", ["pipeline.run.*"])
        assert opened.name == "runs" and opened.lag == 0
        batch = [
            cloud_event(t, subject="p1")
            for t in ("pipeline.run.started", "task.failed", "pipeline.run.succeeded")
        ]
        await stub.PublishBatch(events_pb2.PublishBatchRequest(events=batch))
        first = await sub.next()
        assert first.event.type == "pipeline.run.started" and first.attempt == 1
        # Same subject: the next one waits for the ack.
        assert await sub.nothing_for(0.4)
        listed = (await stub.ListSubscriptions(events_pb2.ListSubscriptionsRequest())).subscriptions
        assert listed[0].lag == 2 and listed[0].in_flight == 1
        await sub.ack(first.event.sequence)
        second = await sub.next()
        assert second.event.type == "pipeline.run.succeeded"
        await sub.ack(second.event.sequence)
        await asyncio.sleep(0.2)
        listed = (await stub.ListSubscriptions(events_pb2.ListSubscriptionsRequest())).subscriptions
        sub.close()
    assert listed[0].lag == 0


async def test_unacked_events_come_back_to_the_next_consumer(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        first = Subscriber(ch)
        await first.open("work", ["task.*"])
        await stub.PublishBatch(
            events_pb2.PublishBatchRequest(events=[cloud_event(subject=f"t{i}") for i in range(3)])
        )
        got = await first.take(3)
        await first.ack(got[0].event.sequence)
        await asyncio.sleep(0.2)
        first.close()  # dies without acking the other two
        await asyncio.sleep(0.2)
        second = Subscriber(ch)
        await second.open("work")
        again = await second.take(2)
        second.close()
    assert sorted(d.event.sequence for d in again) == sorted(d.event.sequence for d in got[1:])
    assert {d.attempt for d in again} == {2}


async def test_visibility_timeout_redelivers_to_a_live_consumer(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        await sub.open("slowpoke", ["task.*"], visibility=0.3)
        await stub.Publish(events_pb2.PublishRequest(event=cloud_event()))
        first = await sub.next()
        again = await sub.next(timeout=5)
        sub.close()
    assert again.event.sequence == first.event.sequence
    assert (first.attempt, again.attempt) == (1, 2)


async def test_nacks_retry_then_dead_letter_then_redrive(tmp_path: Path, database_url: str) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        await sub.open("fragile", ["task.*"], max_attempts=2)
        await stub.Publish(events_pb2.PublishRequest(event=cloud_event(id_="poison")))
        for attempt in (1, 2):
            delivery = await sub.next()
            assert delivery.attempt == attempt
            await sub.nack(delivery.event.sequence, f"boom {attempt}", retry_after=0.05)
        assert await sub.nothing_for(0.5)
        # A nack has no answer of its own: wait for its dead letter.
        async with asyncio.timeout(10):
            while not (
                dead := await stub.ListDeadLetters(
                    events_pb2.ListDeadLettersRequest(subscription="fragile")
                )
            ).dead_letters:
                await asyncio.sleep(0.05)
        (letter,) = dead.dead_letters
        assert (letter.event.id, letter.attempts, letter.last_error) == ("poison", 2, "boom 2")
        moved = await stub.RedriveDeadLetters(
            events_pb2.RedriveDeadLettersRequest(subscription="fragile")
        )
        back = await sub.next()
        await sub.ack(back.event.sequence)
        await asyncio.sleep(0.2)
        empty = await stub.ListDeadLetters(
            events_pb2.ListDeadLettersRequest(subscription="fragile")
        )
        sub.close()
    assert moved.redriven == 1 and back.event.id == "poison" and back.attempt == 1
    assert list(empty.dead_letters) == []


async def test_competing_consumers_share_work_and_keep_order_per_subject(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        consumers = [Subscriber(ch), Subscriber(ch)]
        await consumers[0].open("shared", ["task.*"], credits=4)
        await consumers[1].open("shared", credits=4)
        events = [cloud_event(subject=f"order-{i % 5}", data={"i": i}) for i in range(60)]
        await stub.PublishBatch(events_pb2.PublishBatchRequest(events=events))
        log: list[tuple[int, str, int]] = []

        async def work(index: int) -> None:
            sub = consumers[index]
            while len(log) < 60:
                try:
                    d = await sub.next(timeout=1.0)
                except TimeoutError:
                    continue
                log.append((index, d.event.subject, d.event.sequence))
                await asyncio.sleep(0.005)
                await sub.ack(d.event.sequence)

        await asyncio.wait_for(asyncio.gather(work(0), work(1)), 30)
        for sub in consumers:
            sub.close()
    assert len(log) == 60 and len({seq for _, _, seq in log}) == 60
    assert {index for index, _, _ in log} == {0, 1}
    for subject in {s for _, s, _ in log}:
        seqs = [seq for _, s, seq in log if s == subject]
        assert seqs == sorted(seqs), subject


async def test_bad_subscribe_requests(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        cases = []
        unknown = Subscriber(ch)
        cases.append((unknown, unknown.open("never-made")))
        bad_name = Subscriber(ch)
        cases.append((bad_name, bad_name.open("no spaces allowed", ["task.*"])))
        bad_pattern = Subscriber(ch)
        cases.append((bad_pattern, bad_pattern.open("p", ["Task"])))
        codes = []
        for _sub, opening in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await opening
            codes.append(err.value.code())
        existing = Subscriber(ch)
        await existing.open("fixed", ["task.*"])
        other = Subscriber(ch)
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await other.open("fixed", ["pipeline.*"])
        not_open = Subscriber(ch)
        await not_open.ack(1)
        first_not_open = await not_open.error()
        stub = events_pb2_grpc.EventServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as no_dead:
            await stub.ListDeadLetters(events_pb2.ListDeadLettersRequest(subscription="nope"))
        existing.close()
    assert codes == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(first_not_open, grpc.aio.AioRpcError)
    assert first_not_open.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_dead.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stuck_subscriber_never_blocks_publishers(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        stuck = Subscriber(ch)
        await stuck.open("stuck", ["*"], credits=1)
        started = time.monotonic()
        for chunk in range(20):
            events = [cloud_event(subject=f"s{chunk}-{i}") for i in range(100)]
            await stub.PublishBatch(events_pb2.PublishBatchRequest(events=events), timeout=10)
        elapsed = time.monotonic() - started
        one = await stuck.next()
        assert await stuck.nothing_for(0.3)  # holds one credit, gets nothing more
        listed = (await stub.ListSubscriptions(events_pb2.ListSubscriptionsRequest())).subscriptions
        stuck.close()
    assert one.attempt == 1
    assert listed[0].lag == 2000
    assert elapsed < 20


async def test_delete_subscription_drops_its_state(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        await sub.open("gone", ["task.*"], credits=1)
        await stub.PublishBatch(
            events_pb2.PublishBatchRequest(events=[cloud_event(subject=f"x{i}") for i in range(3)])
        )
        await sub.next()
        sub.close()
        request = events_pb2.DeleteSubscriptionRequest(subscription="gone")
        deleted = await stub.DeleteSubscription(request)
        listed = await stub.ListSubscriptions(events_pb2.ListSubscriptionsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.DeleteSubscription(request)
    assert deleted.dropped_deliveries >= 1
    assert list(listed.subscriptions) == []
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_live_consumer_of_a_deleted_subscription_ends_with_not_found(
    tmp_path: Path,
) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        await sub.open("short-lived", ["task.*"])
        await stub.DeleteSubscription(
            events_pb2.DeleteSubscriptionRequest(subscription="short-lived")
        )
        await stub.Publish(events_pb2.PublishRequest(event=cloud_event()))
        error = await sub.error(timeout=5)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_half_closed_subscriber_still_receives(tmp_path: Path) -> None:
    """grpcurl sends 'open', then closes its side: deliveries must still flow."""
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        sub = Subscriber(ch)
        await sub.open("listen-only", ["task.*"])
        await sub.call.done_writing()
        await stub.Publish(events_pb2.PublishRequest(event=cloud_event(subject="a")))
        delivery = await sub.next()
        sub.close()
    assert delivery.event.subject == "a"
