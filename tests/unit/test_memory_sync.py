"""The service and sync engine over the port fakes: group commit without lost
updates, atomic batches, history depth, checkpoints on both sides, resume
after a failing page, dry run, and schedules that fire once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from datamcp.core.errors import Conflict, NotFound, Unavailable
from datamcp.core.memory.model import RunStatus, SyncRequest
from datamcp.core.memory.schedule import Schedule, SyncScheduler
from datamcp.core.memory.service import MemoryService
from datamcp.core.memory.sync import SyncEngine
from tests.unit.memory_fakes import FakeLedger, FakeStore


@pytest.fixture
async def system() -> AsyncIterator[tuple[MemoryService, SyncEngine, dict[str, FakeStore]]]:
    stores = {s: FakeStore(s, primary=s == "a") for s in ("a", "b")}
    service = MemoryService(list(stores.values()), history_depth=2)
    await service.start()
    yield service, SyncEngine(service, FakeLedger(), page=3), stores
    await service.stop()


async def test_concurrent_puts_with_expected_versions_lose_no_update(system) -> None:  # type: ignore[no-untyped-def]
    service, _, _ = system
    await service.put("t", service.op("ns", "counter", 0))

    async def increment() -> None:
        while True:
            current = await service.get("t", "ns", "counter")
            op = service.op(
                "ns", "counter", current.value + 1, expected_version=str(current.version)
            )
            try:
                await service.put("t", op)
                return
            except Conflict:
                continue

    await asyncio.gather(*(increment() for _ in range(20)))
    assert (await service.get("t", "ns", "counter")).value == 20


async def _put_together(service: MemoryService, keys: list[str]) -> list[object]:
    """One put per key from its own caller and tenant, queued before the writer runs."""
    puts = [
        asyncio.ensure_future(service.put(f"t{n % 3}", service.op("ns", key, n)))
        for n, key in enumerate(keys)
    ]
    return list(await asyncio.gather(*puts, return_exceptions=True))


async def test_one_bad_write_fails_alone_and_the_rest_of_its_group_commits(system) -> None:  # type: ignore[no-untyped-def]
    service, _, stores = system
    stores["a"].poison["bad"] = ValueError("the store refused this value")
    keys = [f"k{i}" for i in range(12)]
    keys.insert(5, "bad")
    outcomes = await _put_together(service, keys)
    assert [k for k, o in zip(keys, outcomes, strict=True) if isinstance(o, BaseException)] == [
        "bad"
    ]
    for n, key in enumerate(keys):
        stored = await stores["a"].get(f"t{n % 3}", "ns", key)
        assert (stored is None) == (key == "bad")


async def test_an_outage_fails_every_write_of_the_group(system) -> None:  # type: ignore[no-untyped-def]
    service, _, stores = system
    stores["a"].poison["k2"] = Unavailable("the database is unavailable; retry later")
    outcomes = await _put_together(service, [f"k{i}" for i in range(5)])
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert stores["a"].records == {}


async def test_batch_is_atomic_and_history_is_bounded(system) -> None:  # type: ignore[no-untyped-def]
    service, _, stores = system
    with pytest.raises(NotFound):
        await service.write(
            "t", [service.op("ns", "x", 1), service.op("ns", "gone", None, delete=True)]
        )
    assert await stores["a"].get("t", "ns", "x") is None
    for i in range(5):
        await service.put("t", service.op("ns", "h", i))
    history = await service.history("t", "ns", "h")
    assert [r.value for r in history] == [4, 3, 2]


async def test_incremental_sync_resumes_after_a_failing_page(system) -> None:  # type: ignore[no-untyped-def]
    service, engine, stores = system
    await service.write("t", [service.op("ns", f"k{i}", i) for i in range(10)], "a")
    real = stores["b"].transaction
    calls = 0

    def flaky():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk went away")
        return real()

    stores["b"].transaction = flaky  # type: ignore[method-assign]
    failed = await engine.synchronize("t", SyncRequest())
    # An unexpected error is named by an error id only (its text is logged).
    assert failed.status == RunStatus.FAILED and "error id" in failed.error
    assert "disk went away" not in failed.error and "OSError" not in failed.error
    assert failed.records_synced == 6  # two pages of three committed before the failure
    stores["b"].transaction = real  # type: ignore[method-assign]
    assert stores["b"].checkpoints["t||a->b"] == 6
    resumed = await engine.synchronize("t", SyncRequest())
    assert resumed.status == RunStatus.SUCCEEDED and resumed.records_synced == 4
    assert stores["a"].checkpoints["t||a->b"] == stores["b"].checkpoints["t||a->b"] == 10
    assert len(stores["b"].records) == 10


async def test_dry_run_writes_nothing(system) -> None:  # type: ignore[no-untyped-def]
    service, engine, stores = system
    await service.put("t", service.op("ns", "k", 1), "a")
    run = await engine.synchronize("t", SyncRequest(dry_run=True))
    assert run.records_synced == 1 and not stores["b"].records and not stores["b"].checkpoints


async def test_a_schedule_slot_fires_once_across_replicas(system) -> None:  # type: ignore[no-untyped-def]
    service, engine, stores = system
    await service.put("t", service.op("ns", "k", 1), "a")
    schedule = Schedule.from_config({"name": "every-minute", "cron": "* * * * *", "tenant": "t"})
    replicas = [SyncScheduler(engine, [schedule]) for _ in range(3)]
    now = 1_800_000_030.0
    started = await asyncio.gather(*(r.fire_due(now) for r in replicas))
    assert sum(started) == 1
    assert sum([await r.fire_due(now + 5) for r in replicas]) == 0
    assert sum([await r.fire_due(now + 60) for r in replicas]) == 1
    await asyncio.sleep(0.05)
    assert ("t", "ns", "k") in stores["b"].records
