"""The event bus over a fake store: publish order and seqs, duplicates, the
group commit (a bad publish fails alone, an outage fails the group), wake-ups
after a commit, and stop committing what is queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from datamcp.core.errors import InvalidArgument, Unavailable
from datamcp.core.events.bus import EventBus, PublishResult
from datamcp.core.events.model import Event, EventFilter
from datamcp.core.instance_model import Instance
from datamcp.core.ports import UnitOfWork, Write, WriteOp
from tests.unit.fakes import Clock, FakeDatabase, outage


def event(event_id: str, tenant: str = "t1", data: Any = None, **kw: Any) -> Event:
    return Event(
        id=event_id, source="/test", type="test.happened", data=data or {}, tenant=tenant, **kw
    )


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
async def bus(db: FakeDatabase) -> AsyncIterator[EventBus]:
    bus = EventBus(db.uow, clock=Clock(5000.0))  # type: ignore[arg-type]
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


async def _publish_together(bus: EventBus, ids: Sequence[str]) -> list[Any]:
    """Publish each id from its own caller, all queued before the writer runs."""
    calls = [
        asyncio.ensure_future(bus.publish([event(i, tenant=f"t{n % 3}")]))
        for n, i in enumerate(ids)
    ]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def stored_ids(db: FakeDatabase) -> list[str]:
    return [e.id for e in db.events_of()]


async def test_publish_stores_in_order_and_answers_the_seqs(
    bus: EventBus, db: FakeDatabase
) -> None:
    first = await bus.publish([event("a"), event("b", data={"n": 1}), event("c")])
    second = await bus.publish([event("d")])
    results = first + second
    assert [r.event.id for r in results] == ["a", "b", "c", "d"]
    assert not any(r.duplicate for r in results)
    seqs = [r.seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert stored_ids(db) == ["a", "b", "c", "d"]
    assert [e.seq for e in db.events_of()] == seqs
    assert db.events[seqs[1]].data == {"n": 1}
    assert all(db.stored_at[s] == 5000.0 for s in seqs)  # the bus's clock
    replayed = [e.id async for e in bus.replay("t1", EventFilter(), from_seq=seqs[0])]
    assert replayed == ["b", "c", "d"]
    assert (bus.published, bus.commits) == (4, 2)


async def test_a_published_again_event_is_a_duplicate_with_its_stored_seq(
    bus: EventBus, db: FakeDatabase
) -> None:
    (original,) = await bus.publish([event("a", data={"v": "first"})])
    again, other, twin, elsewhere = await bus.publish(
        [
            event("a", data={"v": "second"}),
            event("x"),
            event("x", data={"v": "twin"}),
            event("a", tenant="t2"),  # the same id of another tenant is another event
        ]
    )
    assert again.duplicate and again.seq == original.seq
    assert not other.duplicate
    assert twin.duplicate and twin.seq == other.seq  # repeated within one publish
    assert not elsewhere.duplicate and elsewhere.seq not in (original.seq, other.seq)
    assert db.events[original.seq].data == {"v": "first"}  # the first one stays
    assert db.events[other.seq].data == {}
    assert stored_ids(db) == ["a", "x", "a"]
    assert bus.published == 3


async def test_one_bad_publish_fails_alone_and_the_rest_of_its_group_commits(
    bus: EventBus, db: FakeDatabase
) -> None:
    ids = [f"e{i}" for i in range(20)]
    bad = "bad" + "x" * 200  # over the id column's 128 characters
    ids.insert(7, bad)
    outcomes = await _publish_together(bus, ids)
    failed = [i for i, o in zip(ids, outcomes, strict=True) if isinstance(o, BaseException)]
    assert failed == [bad]
    assert isinstance(outcomes[7], InvalidArgument)
    assert outcomes[7].reason == "VALUE_NOT_STORABLE"
    assert set(stored_ids(db)) == set(ids) - {bad}
    # They shared commits: fewer commits than publishes, the failed ones rolled back.
    assert bus.commits < len(ids) - 1
    assert db.rollbacks >= 1
    (after,) = await bus.publish([event("after")])  # the bus keeps serving
    assert not after.duplicate


async def test_an_outage_fails_every_publish_of_the_group_and_stores_nothing(
    bus: EventBus, db: FakeDatabase
) -> None:
    # The connection drops in the middle of the group's append: no split and
    # retry (it is nobody's fault), every publish of the group fails.
    db.poison["e3"] = outage()
    outcomes = await _publish_together(bus, [f"e{i}" for i in range(6)])
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert db.events == {} and db.event_seqs == {}
    assert bus.commits == 0


async def test_publishes_fail_while_the_store_is_down_and_succeed_after(
    bus: EventBus, db: FakeDatabase
) -> None:
    db.outage = outage()
    with pytest.raises(Unavailable):
        await bus.publish([event("a")])
    db.outage = None
    (result,) = await bus.publish([event("a")])
    assert not result.duplicate
    assert stored_ids(db) == ["a"]


async def test_writes_commit_with_the_events_or_not_at_all(bus: EventBus, db: FakeDatabase) -> None:
    applied: list[list[str]] = []

    async def apply(tx: UnitOfWork, items: Sequence[str]) -> None:
        applied.append(list(items))
        for name in items:  # rows written in the publish's transaction
            await tx.instances.add(Instance(name, "host", 1, "v", 1.0, 1.0))

    op = WriteOp("test.write", 0, apply)
    await bus.publish([event("a")], [Write(op, "i1"), Write(op, "i2")])
    assert applied == [["i1", "i2"]]  # one call per op, items in order
    with pytest.raises(InvalidArgument):
        await bus.publish([event("b", subject="\x00")], [Write(op, "i3")])
    assert sorted(db.instances) == ["i1", "i2"]  # i3 went with its event
    assert stored_ids(db) == ["a"]


async def test_consumers_are_woken_after_a_commit_and_not_after_a_failure(
    bus: EventBus, db: FakeDatabase
) -> None:
    wake = asyncio.Event()
    bus.listen(wake)
    next_commit = bus.next_commit()
    waiter = asyncio.ensure_future(bus.wait_for_commit(60))
    await asyncio.sleep(0)
    assert not waiter.done()

    db.outage = outage()
    with pytest.raises(Unavailable):
        await bus.publish([event("lost")])
    await asyncio.sleep(0)
    assert not wake.is_set() and not next_commit.is_set() and not waiter.done()

    db.outage = None
    generation = bus.generation
    await bus.publish([event("a")])
    assert wake.is_set() and next_commit.is_set()
    await asyncio.wait_for(waiter, 5)  # woken well before its 60 s
    assert bus.generation == generation + 1

    wake.clear()
    bus.unlisten(wake)
    await bus.publish([event("b")])
    assert not wake.is_set()


async def test_stop_commits_what_is_queued_then_refuses_publishes(db: FakeDatabase) -> None:
    bus = EventBus(db.uow)  # type: ignore[arg-type]
    await bus.start()
    in_commit, release = asyncio.Event(), asyncio.Event()

    async def slow(tx: UnitOfWork, items: Sequence[object]) -> None:
        in_commit.set()
        await release.wait()

    first = asyncio.ensure_future(
        bus.publish([event("first")], [Write(WriteOp("slow", 0, slow), 0)])
    )
    await in_commit.wait()  # the writer is inside the first commit
    calls = [asyncio.ensure_future(bus.publish([event(f"e{i}")])) for i in range(30)]
    await asyncio.sleep(0)  # all queued behind it
    stopping = asyncio.ensure_future(bus.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()  # stop waits for the queue
    release.set()
    await stopping
    assert first.done() and all(c.done() for c in calls)
    results: list[PublishResult] = [r for c in calls for r in c.result()]
    assert [r.event.id for r in results] == [f"e{i}" for i in range(30)]
    assert stored_ids(db) == ["first"] + [f"e{i}" for i in range(30)]
    with pytest.raises(Unavailable) as stopped:
        await bus.publish([event("late")])
    assert stopped.value.reason == "EVENT_BUS_STOPPED"
