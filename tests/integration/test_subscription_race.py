"""Two processes materialising one subscription's page at once (replicas
whose consumers share a subscription) on PostgreSQL: the slower one must
not insert deliveries the faster one's consumer has already acked, which
would deliver those events again with nothing failing."""

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
    """A unit of work whose first cursor read waits for ``go`` (the slow replica)."""

    def __init__(self, inner: SqlUnitOfWork, read: asyncio.Event, go: asyncio.Event) -> None:
        self._inner = inner
        self._read, self._go = read, go

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
        read, go = self._read, self._go

        class Events:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def read_after_cursor(self, *args: Any) -> Any:
                found = await real.read_after_cursor(*args)
                read.set()
                await go.wait()
                return found

        return Events()


@pytest.mark.pg
async def test_the_slower_of_two_materialisers_inserts_nothing(pg_database: str) -> None:
    engine = create_engine(pg_database)
    await migrate.upgrade(engine)
    bus = EventBus(lambda: SqlUnitOfWork(engine))
    await bus.start()
    try:
        fast = SubscriptionService(lambda: SqlUnitOfWork(engine))
        read, go = asyncio.Event(), asyncio.Event()
        slow = SubscriptionService(
            lambda: _PausedAfterRead(SqlUnitOfWork(engine), read, go)  # type: ignore[arg-type,return-value]
        )
        sub = await fast.ensure("t", "s", EventFilter.build(["race.*"]))
        await bus.publish(
            [new_event(type="race.tick", source="/t", tenant="t", id=f"e{i}") for i in range(10)]
        )
        lagging = asyncio.ensure_future(slow.materialise(sub))
        await read.wait()  # the slow one has read the cursor and the page
        assert await fast.materialise(sub) == 10
        leased = await fast.lease(sub, "consumer-a", 100)
        assert len(leased) == 10
        await fast.ack(sub, [d.event.seq for d in leased])
        go.set()
        assert await lagging == 0
        assert await fast.lease(sub, "consumer-b", 100) == []
    finally:
        await bus.stop()
        await engine.dispose()
