"""MemorySyncService through the real server: every RPC, optimistic concurrency,
bad input, tenant isolation, the change feed, syncs, conflicts, the memory
agent and the memory.sync trigger action. Parametrised over SQLite and
PostgreSQL for the application database (the primary store lives there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2, agents_pb2_grpc, events_pb2, events_pb2_grpc, memory_pb2_grpc
from datamcp.v1 import memory_pb2 as pb
from tests.support import (
    API_KEY,
    RunningServer,
    api_key_config,
    apikey,
    make_settings,
    rich_details,
    running_server,
)

S = pb.SyncStrategy
OTHER_KEY = "other-tenant-key-0123456789abcdef"


def stores(tmp_path: Path, database_url: str) -> list[dict[str, Any]]:
    return [
        {"id": "main", "url": database_url, "primary": True},
        {"id": "b", "url": f"sqlite:///{tmp_path / 'b.db'}"},
        {"id": "c", "url": f"sqlite:///{tmp_path / 'c.db'}"},
    ]


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    settings = make_settings(
        tmp_path,
        database_url,
        **{
            "rate_limit.enabled": False,
            "memory.stores": stores(tmp_path, database_url),
            "memory.history_depth": 3,
            "memory.max_value_bytes": 1000,
            "memory.policies": [{"prefix": "manual", "strategy": "manual"}],
        },
    )
    async with running_server(settings) as s:
        yield s


def stub(server: RunningServer) -> memory_pb2_grpc.MemorySyncServiceStub:
    return memory_pb2_grpc.MemorySyncServiceStub(server.channel())


async def put(
    m: memory_pb2_grpc.MemorySyncServiceStub, ns: str, key: str, value: Any, **kw: Any
) -> pb.MemoryRecord:
    r = await m.Put(pb.PutRequest(namespace=ns, key=key, value=to_value(value), **kw))
    return r.record


async def value_of(
    m: memory_pb2_grpc.MemorySyncServiceStub, ns: str, key: str, store: str = ""
) -> Any:
    return from_value((await m.Get(pb.GetRequest(namespace=ns, key=key, store=store))).record.value)


async def sync(m: memory_pb2_grpc.MemorySyncServiceStub, **kw: Any) -> pb.SyncRun:
    run = (await m.Synchronize(pb.SynchronizeRequest(**kw), timeout=60)).run
    assert run.status == pb.SYNC_RUN_STATUS_SUCCEEDED, run.error
    return run


async def expect_error(call: Any, code: grpc.StatusCode) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return rich_details(info.value)


async def test_put_get_delete_history_and_expected_version(server: RunningServer) -> None:
    m = stub(server)
    first = await put(m, "agents/planner", "goal", {"text": "ship"}, tags=["a"])
    assert first.version and first.origin == "main" and first.causal_context["main"] == first.hlc
    second = await put(
        m, "agents/planner", "goal", {"text": "ship v2"}, expected_version=first.version
    )
    assert second.hlc > first.hlc
    assert await value_of(m, "agents/planner", "goal") == {"text": "ship v2"}
    # A stale expected version is ABORTED with the current version in the details.
    details = await expect_error(
        m.Put(
            pb.PutRequest(
                namespace="agents/planner",
                key="goal",
                value=to_value(1),
                expected_version=first.version,
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert details["ErrorInfo"].metadata["current_version"] == second.version
    for i in range(4):
        await put(m, "agents/planner", "goal", {"n": i})
    history = (
        await m.GetHistory(pb.GetHistoryRequest(namespace="agents/planner", key="goal"))
    ).versions
    assert [from_value(v.value) for v in history] == [{"n": 3}, {"n": 2}, {"n": 1}, {"n": 0}]
    gone = (
        await m.Delete(
            pb.DeleteRequest(
                namespace="agents/planner", key="goal", expected_version=history[0].version
            )
        )
    ).record
    assert gone.deleted
    await expect_error(
        m.Get(pb.GetRequest(namespace="agents/planner", key="goal")), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        m.Delete(pb.DeleteRequest(namespace="agents/planner", key="goal")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_list_search_batch_and_ttl(server: RunningServer) -> None:
    m = stub(server)
    entries = [
        pb.PutEntry(
            namespace="kb" if i % 2 else "kb/deep",
            key=f"k{i:03}",
            value=to_value({"i": i, "word": "apple" if i % 3 == 0 else "pear"}),
            tags=["even"] if i % 2 == 0 else [],
            metadata={"owner": "ann" if i < 10 else "bob"},
        )
        for i in range(25)
    ]
    written = (await m.BatchPut(pb.BatchPutRequest(entries=entries))).records
    assert len(written) == 25
    await put(m, "kbx", "other", 1)  # a sibling namespace, not a child of kb
    seen, token = [], ""
    while True:
        page = await m.List(pb.ListRequest(namespace_prefix="kb", page_size=7, page_token=token))
        seen += [r.key for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"k{i:03}" for i in range(25)]
    found = await m.Search(
        pb.SearchRequest(
            namespace_prefix="kb", tags=["even"], metadata={"owner": "bob"}, text="APPLE"
        )
    )
    assert sorted(r.key for r in found.records) == ["k012", "k018", "k024"]
    # A BatchPut is all or nothing: one stale expected version fails every entry.
    await expect_error(
        m.BatchPut(
            pb.BatchPutRequest(
                entries=[
                    pb.PutEntry(namespace="kb", key="new", value=to_value(1)),
                    pb.PutEntry(
                        namespace="kb", key="k001", value=to_value(2), expected_version="1@main"
                    ),
                ]
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    await expect_error(m.Get(pb.GetRequest(namespace="kb", key="new")), grpc.StatusCode.NOT_FOUND)
    ttl = duration_pb2.Duration(nanos=200_000_000)
    await put(m, "tmp", "short", "soon gone", ttl=ttl)
    assert await value_of(m, "tmp", "short") == "soon gone"
    await asyncio.sleep(0.3)
    await expect_error(
        m.Get(pb.GetRequest(namespace="tmp", key="short")), grpc.StatusCode.NOT_FOUND
    )


async def test_bad_input_is_invalid_argument_or_not_found_with_details(
    server: RunningServer,
) -> None:
    m = stub(server)
    cases = [
        (pb.PutRequest(namespace="ok", key="", value=to_value(1)), "key"),
        (pb.PutRequest(namespace="bad ns!", key="k", value=to_value(1)), "namespace"),
        (pb.PutRequest(namespace="a//b", key="k", value=to_value(1)), "namespace"),
        (pb.PutRequest(namespace="ok", key="k", value=to_value("x" * 2000)), "value"),
        (pb.PutRequest(namespace="ok", key="k"), "value"),
    ]
    for request, field in cases:
        details = await expect_error(m.Put(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert [v.field for v in details["BadRequest"].field_violations] == [field]
    details = await expect_error(
        m.BatchPut(
            pb.BatchPutRequest(
                entries=[
                    pb.PutEntry(namespace="ok", key="fine", value=to_value(1)),
                    pb.PutEntry(namespace="ok", key="", value=to_value(1)),
                ]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details["BadRequest"].field_violations[0].field == "entries[1].key"
    details = await expect_error(
        m.Put(pb.PutRequest(namespace="ok", key="k", value=to_value(1), store="nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details["ErrorInfo"].reason == "STORE_NOT_FOUND"
    details = await expect_error(
        m.Synchronize(pb.SynchronizeRequest(stores=["main", "nope"])), grpc.StatusCode.NOT_FOUND
    )
    assert details["ErrorInfo"].metadata["field"] == "stores[1]"
    details = await expect_error(
        m.Synchronize(pb.SynchronizeRequest(stores=["main"])), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details["BadRequest"].field_violations[0].field == "stores"
    await expect_error(
        m.List(pb.ListRequest(page_token="garbage!")), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(
        m.GetSyncRun(pb.GetSyncRunRequest(sync_id="missing")), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        m.ResolveConflict(pb.ResolveConflictRequest(conflict_id="missing", version="1@a")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_tenants_see_only_their_records(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        **{
            "rate_limit.enabled": False,
            "auth.api_keys": [
                api_key_config(API_KEY, "alice", "acme", ["user"]),
                api_key_config(OTHER_KEY, "eve", "evil", ["user"]),
            ],
        },
    )
    async with running_server(settings) as server:
        m = stub(server)
        acme, evil = apikey(API_KEY), apikey(OTHER_KEY)
        await m.Put(pb.PutRequest(namespace="ns", key="k", value=to_value("acme")), metadata=acme)
        with pytest.raises(grpc.RpcError) as info:
            await m.Get(pb.GetRequest(namespace="ns", key="k"), metadata=evil)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (await m.List(pb.ListRequest(), metadata=evil)).records
        assert not (await m.Search(pb.SearchRequest(text="acme"), metadata=evil)).records
        await m.Put(pb.PutRequest(namespace="ns", key="k", value=to_value("evil")), metadata=evil)
        got = await m.Get(pb.GetRequest(namespace="ns", key="k"), metadata=acme)
        assert from_value(got.record.value) == "acme"


async def test_watch_changes_streams_the_feed_from_a_sequence(server: RunningServer) -> None:
    m = stub(server)
    first = await put(m, "w", "a", 1)
    call = m.WatchChanges(
        pb.WatchChangesRequest(namespace_prefix="w", from_sequence=first.sequence)
    )
    got: list[pb.MemoryRecord] = []

    async def read() -> None:
        async for change in call:
            got.append(change.record)
            if len(got) == 3:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.1)
    await put(m, "w", "b", 2)
    await put(m, "other", "x", 0)  # outside the prefix
    await put(m, "w", "a", 3)
    await m.Delete(pb.DeleteRequest(namespace="w", key="b"))
    await asyncio.wait_for(reader, 10)
    call.cancel()
    assert [(r.key, r.deleted) for r in got] == [("b", False), ("a", False), ("b", True)]
    assert [r.sequence for r in got] == sorted(r.sequence for r in got)


async def test_list_stores_lag_counts_the_primarys_changes_a_store_has_yet_to_pull(
    server: RunningServer,
) -> None:
    m = stub(server)

    async def lags() -> dict[str, int]:
        listed = (await m.ListStores(pb.ListStoresRequest())).stores
        assert all(s.healthy for s in listed)
        return {s.id: s.lag for s in listed}

    for i in range(5):
        await put(m, "lag", f"k{i}", i)
    assert await lags() == {"main": 5, "b": 5, "c": 5}
    await sync(m, stores=["main", "b"])
    # b has pulled the primary's changes, c has not: the primary shows the most behind.
    assert await lags() == {"main": 5, "b": 0, "c": 5}
    await sync(m, stores=["main", "c"], namespace_prefix="lag")  # its own checkpoints
    assert await lags() == {"main": 5, "b": 0, "c": 5}
    await sync(m)
    assert await lags() == {"main": 0, "b": 0, "c": 0}
    await put(m, "lag", "k0", "changed")
    await put(m, "lag", "only-b", 1, store="b")  # not the primary's: no lag
    assert await lags() == {"main": 1, "b": 1, "c": 1}


async def test_sync_full_incremental_idempotent_dry_run_and_list_stores(
    server: RunningServer,
) -> None:
    m = stub(server)
    for i in range(30):
        await put(m, "s", f"k{i}", i)
    await put(m, "s", "only-b", "b", store="b")
    dry = await sync(m, dry_run=True)
    assert dry.dry_run and dry.records_synced > 0
    await expect_error(
        m.Get(pb.GetRequest(namespace="s", key="k0", store="c")), grpc.StatusCode.NOT_FOUND
    )
    stores_before = {s.id: s for s in (await m.ListStores(pb.ListStoresRequest())).stores}
    assert stores_before["b"].lag == 30 and stores_before["main"].primary
    run = await sync(m)
    assert run.records_synced == 30 * 2 + 2  # to b and c, and b's key to main and c
    for store in ("main", "b", "c"):
        assert await value_of(m, "s", "k7", store) == 7
        assert await value_of(m, "s", "only-b", store) == "b"
    again = await sync(m)
    assert again.records_synced == 0 and again.conflicts_detected == 0
    stores_after = {s.id: s for s in (await m.ListStores(pb.ListStoresRequest())).stores}
    assert all(s.healthy and s.lag == 0 and s.records == 31 for s in stores_after.values())
    await put(m, "s", "k1", "changed", store="c")
    incremental = await sync(m)
    assert incremental.records_synced == 2
    assert await value_of(m, "s", "k1", "b") == "changed"
    full = await sync(m, mode=pb.SYNC_MODE_FULL)
    assert full.records_synced == 0 and full.records_read > 0
    runs = (await m.ListSyncRuns(pb.ListSyncRunsRequest(page_size=2))).runs
    assert [r.sync_id for r in runs] == [full.sync_id, incremental.sync_id]
    got = (await m.GetSyncRun(pb.GetSyncRunRequest(sync_id=run.sync_id))).run
    assert got.records_synced == run.records_synced and got.end_time.seconds > 0


async def test_concurrent_writes_resolved_by_strategies(server: RunningServer) -> None:
    m = stub(server)
    await put(m, "doc", "d", {"title": "t", "body": "b", "n": 0})
    await sync(m)
    await put(m, "doc", "d", {"title": "T2", "body": "b", "n": 0}, store="b")
    await put(m, "doc", "d", {"title": "t", "body": "B3", "n": 0}, store="c")
    run = await sync(m, strategy=S.SYNC_STRATEGY_MERGE)
    assert run.conflicts_detected >= 1 and run.conflicts_pending == 0
    for store in ("main", "b", "c"):
        assert await value_of(m, "doc", "d", store) == {"title": "T2", "body": "B3", "n": 0}
    conflicts = (await m.ListConflicts(pb.ListConflictsRequest(namespace_prefix="doc"))).conflicts
    assert conflicts and all(c.status == pb.CONFLICT_STATUS_RESOLVED for c in conflicts)
    assert all(len(c.versions) == 2 for c in conflicts)
    # source_priority: c outranks b.
    await put(m, "doc", "p", "from-b", store="b")
    await put(m, "doc", "p", "from-c", store="c")
    await sync(m, strategy=S.SYNC_STRATEGY_SOURCE_PRIORITY, priority=["c", "b", "main"])
    assert {await value_of(m, "doc", "p", s) for s in ("main", "b", "c")} == {"from-c"}
    # timestamp_wins: the later write wins.
    await put(m, "doc", "t", "early", store="c")
    await put(m, "doc", "t", "late", store="b")
    await sync(m, strategy=S.SYNC_STRATEGY_TIMESTAMP_WINS)
    assert {await value_of(m, "doc", "t", s) for s in ("main", "b", "c")} == {"late"}


async def test_manual_conflicts_queue_and_resolve(server: RunningServer) -> None:
    m = stub(server)
    events = events_pb2_grpc.EventServiceStub(server.channel())
    await put(m, "manual/x", "k", "main-version")
    b_version = await put(m, "manual/x", "k", "b-version", store="b")
    run = await sync(m, stores=["main", "b"])
    assert run.conflicts_pending == 1 and run.conflicts_detected == 1
    assert await value_of(m, "manual/x", "k", "main") == "main-version"
    assert await value_of(m, "manual/x", "k", "b") == "b-version"
    again = await sync(m, stores=["main", "b"])
    assert again.conflicts_detected == 0  # checkpoints moved on; the queue holds it
    pending = (
        await m.ListConflicts(pb.ListConflictsRequest(status=pb.CONFLICT_STATUS_PENDING))
    ).conflicts
    assert len(pending) == 1
    conflict = pending[0]
    assert {from_value(v.value) for v in conflict.versions} == {"main-version", "b-version"}
    await expect_error(
        m.ResolveConflict(pb.ResolveConflictRequest(conflict_id=conflict.id, version="1@zz")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        m.ResolveConflict(pb.ResolveConflictRequest(conflict_id=conflict.id)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    resolved = await m.ResolveConflict(
        pb.ResolveConflictRequest(conflict_id=conflict.id, version=b_version.version)
    )
    assert resolved.conflict.status == pb.CONFLICT_STATUS_RESOLVED
    assert from_value(resolved.record.value) == "b-version"
    await expect_error(
        m.ResolveConflict(
            pb.ResolveConflictRequest(conflict_id=conflict.id, version=b_version.version)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    after = await sync(m, stores=["main", "b"])
    assert after.conflicts_detected == 0
    assert await value_of(m, "manual/x", "k", "b") == "b-version"
    replay = events.Replay(
        events_pb2.ReplayRequest(filter=events_pb2.EventFilter(types=["sync.*"]))
    )
    types = set()
    async for item in replay:
        types.add(item.event.type)
    assert {
        "sync.started",
        "sync.completed",
        "sync.conflict.detected",
        "sync.conflict.resolved",
    } <= types


async def test_background_sync_is_watched_to_the_end(server: RunningServer) -> None:
    m = stub(server)
    await m.BatchPut(
        pb.BatchPutRequest(
            entries=[pb.PutEntry(namespace="bg", key=f"k{i}", value=to_value(i)) for i in range(50)]
        )
    )
    started = (await m.Synchronize(pb.SynchronizeRequest(background=True))).run
    states = [
        update.run
        async for update in m.WatchSyncRun(pb.WatchSyncRunRequest(sync_id=started.sync_id))
    ]
    assert states[-1].status == pb.SYNC_RUN_STATUS_SUCCEEDED
    assert states[-1].records_synced == 100


async def test_memory_agent_uses_the_store_through_execute_task(server: RunningServer) -> None:
    agents = agents_pb2_grpc.AgentServiceStub(server.channel())
    m = stub(server)

    async def run(capability: str, payload: Any) -> agents_pb2.Task:
        spec = agents_pb2.TaskSpec(capability=capability, input=to_value(payload))
        return (await agents.ExecuteTask(agents_pb2.ExecuteTaskRequest(task=spec), timeout=10)).task

    stored = await run("memory.put", {"namespace": "notes", "key": "n1", "value": {"x": 1}})
    assert stored.state == agents_pb2.TASK_STATE_SUCCEEDED
    assert await value_of(m, "agents/notes", "n1") == {"x": 1}
    got = await run("memory.get", {"namespace": "notes", "key": "n1"})
    assert from_value(got.result)["value"] == {"x": 1}
    found = await run("memory.search", {"namespace": "notes", "text": "x"})
    assert [r["key"] for r in from_value(found.result)["records"]] == ["n1"]
    missing = await run("memory.get", {"namespace": "notes", "key": "nope"})
    assert missing.state == agents_pb2.TASK_STATE_FAILED
    assert missing.error.reason == "MEMORY_NOT_FOUND"


async def test_memory_sync_trigger_runs_a_sync_from_an_event(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        **{
            "rate_limit.enabled": False,
            "memory.stores": stores(tmp_path, database_url)[:2],
            "events.triggers": [
                {
                    "name": "sync-on-demand",
                    "types": ["ops.sync.requested"],
                    "action": "memory.sync",
                    "params": {"strategy": "timestamp_wins"},
                }
            ],
        },
    )
    async with running_server(settings) as server:
        m = stub(server)
        events = events_pb2_grpc.EventServiceStub(server.channel())
        await put(m, "t", "k", "v")
        await events.Publish(
            events_pb2.PublishRequest(
                event=events_pb2.CloudEvent(type="ops.sync.requested", source="/test", id="req-1")
            )
        )
        async with asyncio.timeout(15):
            while True:
                runs = (await m.ListSyncRuns(pb.ListSyncRunsRequest())).runs
                if runs and runs[0].status == pb.SYNC_RUN_STATUS_SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
        assert runs[0].trigger == "event:ops.sync.requested"
        assert await value_of(m, "t", "k", "b") == "v"


async def test_postgresql_store_and_sqlite_store_synchronise(
    tmp_path: Path, pg_database: str
) -> None:
    """A PostgreSQL store (its own database, not the app's) and SQLite stores."""
    app_db = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'datamcp.db'}"
    settings = make_settings(
        tmp_path,
        app_db,
        **{
            "rate_limit.enabled": False,
            "memory.stores": [
                {"id": "lite", "url": app_db, "primary": True},
                {"id": "pg", "url": pg_database},
            ],
        },
    )
    async with running_server(settings) as server:
        m = stub(server)
        for i in range(120):
            await put(m, f"p/{i % 3}", f"k{i}", {"i": i}, store="pg" if i % 2 else "lite")
        await put(m, "p/x", "both", {"a": 1, "b": 1})
        await sync(m)
        await put(m, "p/x", "both", {"a": 2, "b": 1}, store="pg")
        await put(m, "p/x", "both", {"a": 1, "b": 2}, store="lite")
        run = await sync(m, strategy=S.SYNC_STRATEGY_MERGE)
        assert run.conflicts_detected == 1 and run.conflicts_resolved == 1
        for store in ("lite", "pg"):
            assert await value_of(m, "p/x", "both", store) == {"a": 2, "b": 2}
            assert await value_of(m, "p/1", "k7", store) == {"i": 7}
        listed = {s.id: s for s in (await m.ListStores(pb.ListStoresRequest())).stores}
        assert listed["pg"].records == listed["lite"].records == 121
        assert listed["pg"].url.startswith("postgresql") and "***" not in listed["lite"].url
        assert (await sync(m)).records_synced == 0


async def test_expired_records_are_purged_as_tombstones_that_sync(server: RunningServer) -> None:
    m = stub(server)
    assert server.server.app.memory is not None
    service = server.server.app.memory.service
    ttl = duration_pb2.Duration(nanos=200_000_000)
    for i in range(5):
        await put(m, "ttl", f"k{i}", i, ttl=ttl)
    refreshed = await put(m, "ttl", "kept", "old", ttl=ttl)
    await put(m, "ttl", "forever", "stays")
    await sync(m, stores=["main", "b"])  # b holds the live copies before they expire
    await asyncio.sleep(0.3)
    # Refreshed after expiry: the sweep must not tombstone the new version.
    await put(m, "ttl", "kept", "new", expected_version="")
    service.purge_batch = 3  # bounded work per sweep
    assert await service.purge_expired() == 3
    assert await service.purge_expired() == 2
    assert await service.purge_expired() == 0
    listed = (await m.List(pb.ListRequest(namespace_prefix="ttl", include_deleted=True))).records
    by_key = {r.key: r for r in listed}
    assert all(by_key[f"k{i}"].deleted for i in range(5))
    assert from_value(by_key["kept"].value) == "new" and by_key["kept"].version != refreshed.version
    assert from_value(by_key["forever"].value) == "stays"
    # The tombstones are versions that follow the expired ones: they sync.
    await sync(m, stores=["main", "b"])
    on_b = (
        await m.List(pb.ListRequest(namespace_prefix="ttl", include_deleted=True, store="b"))
    ).records
    assert {r.key: r.deleted for r in on_b} == {
        **{f"k{i}": True for i in range(5)},
        "kept": False,
        "forever": False,
    }
    assert {r.key: r.version for r in on_b} == {r.key: r.version for r in listed}
    assert not (await m.ListConflicts(pb.ListConflictsRequest())).conflicts
    events = events_pb2_grpc.EventServiceStub(server.channel())
    flt = events_pb2.EventFilter(types=["memory.expired"])
    expired = [r.event.subject async for r in events.Replay(events_pb2.ReplayRequest(filter=flt))]
    assert sorted(expired) == [f"ttl/k{i}" for i in range(5)]


async def test_search_pages_are_full_past_many_non_matching_records(
    server: RunningServer,
) -> None:
    m = stub(server)
    for batch in range(6):  # 6,000 records; 1 in 500 matches
        await m.BatchPut(
            pb.BatchPutRequest(
                entries=[
                    pb.PutEntry(
                        namespace="bulk",
                        key=f"k{batch * 1000 + i:05}",
                        value=to_value({"w": "Needle" if i % 500 == 499 else "hay"}),
                        tags=["hit"] if i % 500 == 499 else ["miss"],
                        metadata={"n": "1" if i % 500 == 499 else "0"},
                    )
                    for i in range(1000)
                ]
            ),
            timeout=60,
        )
    hits = [f"k{b * 1000 + i:05}" for b in range(6) for i in (499, 999)]
    for request in (
        pb.SearchRequest(namespace_prefix="bulk", text="needle", page_size=5),
        pb.SearchRequest(namespace_prefix="bulk", tags=["hit"], page_size=5),
        pb.SearchRequest(namespace_prefix="bulk", metadata={"n": "1"}, page_size=5),
    ):
        seen, token, sizes = [], "", []
        while True:
            request.page_token = token
            page = await m.Search(request)
            sizes.append(len(page.records))
            seen += [r.key for r in page.records]
            token = page.next_page_token
            if not token:
                break
        assert seen == hits and sizes[:2] == [5, 5], (request, sizes)


async def test_search_filters_match_whole_tags_and_metadata_and_literal_text(
    server: RunningServer,
) -> None:
    m = stub(server)
    await put(m, "f", "a", {"t": "100% done_ok"}, tags=['x"t', "tt"], metadata={"k": 'v", "k'})
    await put(m, "f", "b", {"t": "100 percent"}, tags=["t"], metadata={"k": "v"})
    await put(m, "f", "c", {"t": "x"}, tags=["a", "t", "z"], metadata={"j": "v", "k": "v"})
    await put(m, "f", "d", {"t": "gone"}, tags=["t"])
    await put(m, "f", "e", {"t": "y"}, tags=["T"], metadata={"k": "V"})
    await m.Delete(pb.DeleteRequest(namespace="f", key="d"))

    async def keys(**kw: Any) -> list[str]:
        found = await m.Search(pb.SearchRequest(namespace_prefix="f", **kw))
        return [r.key for r in found.records]

    assert await keys(tags=["t"]) == ["b", "c"]
    assert await keys(tags=["t", "z"]) == ["c"]
    assert await keys(tags=["T"]) == ["e"]
    assert await keys(tags=['x"t']) == ["a"]
    assert await keys(metadata={"k": "v"}) == ["b", "c"]
    assert await keys(metadata={"k": 'v", "k'}) == ["a"]
    assert await keys(text="100%") == ["a"]
    assert await keys(text="done_ok") == ["a"]
    assert await keys(text="_") == ["a"]
    assert await keys(text="GONE") == []


async def test_memory_events_commit_with_the_write(server: RunningServer) -> None:
    m = stub(server)
    events = events_pb2_grpc.EventServiceStub(server.channel())

    async def stored(subject: str) -> list[str]:
        flt = events_pb2.EventFilter(types=["memory.*"], subject=subject)
        return [r.event.type async for r in events.Replay(events_pb2.ReplayRequest(filter=flt))]

    # On the primary (the application database) the event is in the event
    # store as soon as the write returns: it committed in the same transaction.
    written = await asyncio.gather(*(put(m, "ev", f"k{i}", i) for i in range(20)))
    for record in written:
        assert await stored(f"ev/{record.key}") == ["memory.put"]
    await m.Delete(pb.DeleteRequest(namespace="ev", key="k0"))
    assert await stored("ev/k0") == ["memory.put", "memory.deleted"]
    # Another store: best effort after the commit (its change feed is durable).
    await m.Put(pb.PutRequest(namespace="ev", key="on-b", value=to_value(1), store="b"))
    async with asyncio.timeout(5):
        while await stored("ev/on-b") != ["memory.put"]:
            await asyncio.sleep(0.05)


async def test_the_purge_sweep_runs_on_its_own(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        **{"rate_limit.enabled": False, "memory.purge_interval": 0.1, "memory.purge_batch": 2},
    )
    async with running_server(settings) as server:
        m = stub(server)
        ttl = duration_pb2.Duration(nanos=100_000_000)
        for i in range(5):  # more than one sweep's batch: the backlog goes on at once
            await put(m, "auto", f"k{i}", i, ttl=ttl)
        async with asyncio.timeout(10):
            while True:
                listed = (
                    await m.List(pb.ListRequest(namespace_prefix="auto", include_deleted=True))
                ).records
                if len(listed) == 5 and all(r.deleted for r in listed):
                    break
                await asyncio.sleep(0.05)
