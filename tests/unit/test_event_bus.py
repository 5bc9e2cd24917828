"""The event bus's group commit over a fake store: publishes that share a
commit succeed or fail on their own merits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from datamcp.core.errors import Unavailable
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Event
from tests.unit.fakes import FakeUnitOfWork, StoredEvents


def event(event_id: str, tenant: str = "t1") -> Event:
    return Event(id=event_id, source="/test", type="test.happened", data={}, tenant=tenant)


@pytest.fixture
async def bus_and_store() -> AsyncIterator[tuple[EventBus, StoredEvents]]:
    store = StoredEvents()
    bus = EventBus(lambda: FakeUnitOfWork(store))  # type: ignore[arg-type, return-value]
    await bus.start()
    try:
        yield bus, store
    finally:
        await bus.stop()


async def _publish_together(bus: EventBus, ids: list[str]) -> list[object]:
    """Publish each id from its own caller, all queued before the writer runs."""
    calls = [
        asyncio.ensure_future(bus.publish([event(i, tenant=f"t{n % 3}")]))
        for n, i in enumerate(ids)
    ]
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_one_bad_publish_fails_alone_and_the_rest_of_its_group_commits(
    bus_and_store: tuple[EventBus, StoredEvents],
) -> None:
    bus, store = bus_and_store
    store.poison["bad"] = ValueError("the store refused this value")
    ids = [f"e{i}" for i in range(20)]
    ids.insert(7, "bad")
    outcomes = await _publish_together(bus, ids)
    failed = [i for i, o in zip(ids, outcomes, strict=True) if isinstance(o, BaseException)]
    assert failed == ["bad"]
    assert isinstance(outcomes[7], ValueError)
    stored = {e.id for e in store.by_seq.values()}
    assert stored == set(ids) - {"bad"}
    # The bus keeps serving afterwards.
    (result,) = await bus.publish([event("after")])
    assert not result.duplicate


async def test_an_outage_fails_every_publish_of_the_group_and_stores_nothing(
    bus_and_store: tuple[EventBus, StoredEvents],
) -> None:
    bus, store = bus_and_store
    store.poison["e3"] = Unavailable("the database is unavailable; retry later")
    outcomes = await _publish_together(bus, [f"e{i}" for i in range(6)])
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert store.by_seq == {}
