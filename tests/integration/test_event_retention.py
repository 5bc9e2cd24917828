"""Retention drops old events by age and count, never one a subscription still needs."""

from __future__ import annotations

from pathlib import Path

from datamcp.bootstrap import App
from datamcp.core.events.api import EventDraft
from datamcp.core.events.model import EventFilter
from tests.support import make_settings


async def test_retention_keeps_what_deliveries_and_dead_letters_need(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **{"events.retention_count": 5})
    app = await App.create(settings)
    await app.start()
    try:
        api = app.events
        consumer = await api.open_consumer("default", "keeper", EventFilter.build(["keep.*"]))
        drafts = [EventDraft(type="keep.me", source="/t", subject=f"k{i}") for i in range(3)]
        drafts += [EventDraft(type="drop.me", source="/t", subject=f"d{i}") for i in range(12)]
        published = await api.publish("default", drafts)
        await api.subscriptions.materialise(consumer.subscription)
        lagging = await api.open_consumer(
            "default", "lagging", EventFilter.build(["drop.*"]), from_earliest=True
        )
        held = await api.bus.prune()  # "lagging" has not looked at anything yet
        await api.subscriptions.materialise(lagging.subscription)
        await api.subscriptions.ack(lagging.subscription, [r.seq for r in published[3:]])
        removed = await api.bus.prune()
        left = [e async for e in api.bus.replay("default", EventFilter())]
    finally:
        await app.close()
    kept_types = [e.type for e in left]
    assert held == 0
    assert removed == 7  # 15 events, keep the newest 5 plus the 3 pending deliveries
    assert kept_types.count("keep.me") == 3
    assert [e.seq for e in left if e.type == "drop.me"] == [r.seq for r in published[-5:]]


async def test_the_count_limit_is_per_tenant(tmp_path: Path, database_url: str) -> None:
    """One tenant's volume never pushes another tenant's events out."""
    settings = make_settings(tmp_path, database_url, **{"events.retention_count": 5})
    app = await App.create(settings)
    await app.start()
    try:
        api = app.events
        quiet = await api.publish("quiet", [EventDraft(type="a.b", source="/t") for _ in range(3)])
        for _ in range(4):
            await api.publish("loud", [EventDraft(type="a.b", source="/t") for _ in range(10)])
        removed = await api.bus.prune()
        kept = {
            tenant: [e.seq async for e in api.bus.replay(tenant, EventFilter())]
            for tenant in ("quiet", "loud")
        }
    finally:
        await app.close()
    assert removed == 35
    assert kept["quiet"] == [r.seq for r in quiet]
    assert len(kept["loud"]) == 5
