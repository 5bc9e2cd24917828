"""Two processes materialising one subscription's page at once (replicas
whose consumers share a subscription) on PostgreSQL: they take turns on the
subscription's row, so the second reads on from where the first left off
(it neither reads the page again nor inserts deliveries the first's
consumer may already have acked, which would deliver those events again
with nothing failing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import EventFilter, new_event
from datamcp.core.events.subscriptions import SubscriptionService


class _PausedAfterRead:
    """A unit of work whose first cursor read waits for ``go`` (the slow
    replica), and that records how many events each of its reads returned."""

    def __init__(
        self, inner: SqlUnitOfWork, read: asyncio.Event, go: asyncio.Event, pages: list[int]
    ) -> None:
        self._inner = inner
        self._read, self._go, self._pages = read, go, pages

    async def __aenter__(self) -> _PausedAfterRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    async def commit(self) -> None:
        await self._inner.commit()

    @property
    def events(self) -> Any:
        real = self._inner.events
        read, go, pages = self._read, self._go, self._pages

        class Events:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def read_after_cursor(self, *args: Any) -> Any:
                found = await real.read_after_cursor(*args)
                pages.append(len(found[1]))
                read.set()
                await go.wait()
                return found

        return Events()


@pytest.mark.pg
async def test_materialisers_of_one_subscription_take_turns(pg_database: str) -> None:
    engine = create_engine(pg_database)
    await migrate.upgrade(engine)
    bus = EventBus(lambda: SqlUnitOfWork(engine))
    await bus.start()
    try:
        first_pages: list[int] = []
        second_pages: list[int] = []
        read, go, second_read = asyncio.Event(), asyncio.Event(), asyncio.Event()
        always = asyncio.Event()
        always.set()
        first = SubscriptionService(
            lambda: _PausedAfterRead(SqlUnitOfWork(engine), read, go, first_pages)  # type: ignore[arg-type,return-value]
        )
        second = SubscriptionService(
            lambda: _PausedAfterRead(SqlUnitOfWork(engine), second_read, always, second_pages)  # type: ignore[arg-type,return-value]
        )
        sub = await first.ensure("t", "s", EventFilter.build(["race.*"]))
        await bus.publish(
            [new_event(type="race.tick", source="/t", tenant="t", id=f"e{i}") for i in range(10)]
        )
        leading = asyncio.ensure_future(first.materialise(sub))
        await read.wait()  # the first has read the cursor and the page, and holds the row
        following = asyncio.ensure_future(second.materialise(sub))
        done, _ = await asyncio.wait([following], timeout=0.3)
        assert not done, "the second materialiser must wait for the first to commit"
        assert second_pages == []
        go.set()
        assert await leading == 10
        assert await following == 0
        assert second_pages == [0], "the second reads on from the moved cursor"
        leased = await second.lease(sub, "consumer-b", 100)
        assert [d.event.id for d in leased] == [f"e{i}" for i in range(10)]
        await second.ack(sub, [d.event.seq for d in leased])
        assert await first.lease(sub, "consumer-a", 100) == []
    finally:
        await bus.stop()
        await engine.dispose()


@pytest.mark.pg
async def test_a_nack_does_not_wait_for_a_materialiser(pg_database: str) -> None:
    """A nack buries its delivery while another transaction materialises the
    subscription: the turn-taking lock holds back other materialisers only."""
    engine = create_engine(pg_database)
    await migrate.upgrade(engine)
    bus = EventBus(lambda: SqlUnitOfWork(engine))
    await bus.start()
    try:
        read, go = asyncio.Event(), asyncio.Event()
        materialiser = SubscriptionService(
            lambda: _PausedAfterRead(SqlUnitOfWork(engine), read, go, [])  # type: ignore[arg-type,return-value]
        )
        plain = SubscriptionService(lambda: SqlUnitOfWork(engine))
        sub = await plain.ensure("t", "s", EventFilter.build(["race.*"]), max_attempts=1)
        await bus.publish([new_event(type="race.tick", source="/t", tenant="t", id="first")])
        (leased,) = await plain.lease(sub, "consumer-a", 10)
        await bus.publish([new_event(type="race.tick", source="/t", tenant="t", id="second")])
        holding = asyncio.ensure_future(materialiser.materialise(sub))
        await read.wait()  # it holds the subscription's row until it commits
        buried = await asyncio.wait_for(plain.nack(sub, leased.event.seq, "bad"), 5)
        assert buried
        (letter,) = await plain.dead_letters("t", "s", 0, 10)
        assert letter.event.id == "first"
        go.set()
        assert await holding == 1
    finally:
        await bus.stop()
        await engine.dispose()
