"""Tenant matrix rows of MemorySyncService: memory records, sync runs, conflicts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import memory_pb2
from tests.tenancy.probes import (
    Row,
    answers,
    empty,
    not_found,
    status,
)
from tests.tenancy.world import (
    A_SECRET,
    NEEDLE,
    SHARED_KEY,
    SHARED_NS,
    World,
    collect,
)

# --- memory records, sync runs, conflicts ------------------------------------------------

M = memory_pb2
STORES = ("main", "b")


async def _put_same_key(w: World) -> list[Message]:
    stale = await status(
        w.b.memory.Put(
            M.PutRequest(
                namespace=SHARED_NS,
                key=SHARED_KEY,
                value=to_value("globex"),
                expected_version=w.ids["version"],
            )
        )
    )
    assert stale == grpc.StatusCode.ABORTED
    put = await w.b.memory.Put(
        M.PutRequest(namespace=SHARED_NS, key=SHARED_KEY, value=to_value("globex"))
    )
    mine = await w.b.memory.Get(M.GetRequest(namespace=SHARED_NS, key=SHARED_KEY))
    theirs = await w.a.memory.Get(M.GetRequest(namespace=SHARED_NS, key=SHARED_KEY))
    assert from_value(mine.record.value) == "globex"
    assert from_value(theirs.record.value) == A_SECRET
    history = await w.b.memory.GetHistory(M.GetHistoryRequest(namespace=SHARED_NS, key=SHARED_KEY))
    return [put, mine, history]


async def _batch_put_same_key(w: World) -> list[Message]:
    entry = M.PutEntry(
        namespace=SHARED_NS,
        key=SHARED_KEY,
        value=to_value("globex"),
        expected_version=w.ids["version"],
    )
    assert await status(w.b.memory.BatchPut(M.BatchPutRequest(entries=[entry]))) == (
        grpc.StatusCode.ABORTED
    )
    entry.ClearField("expected_version")
    done = await w.b.memory.BatchPut(M.BatchPutRequest(entries=[entry], store="b"))
    return [done]


def _each_store(make: Callable[[World, str], Any]) -> list[Callable[[World], Any]]:
    return [lambda w, s=s: make(w, s) for s in STORES]


async def _watch_changes(w: World) -> list[Message]:
    out: list[Message] = []
    for store in STORES:
        out.extend(await collect(w.b.memory.WatchChanges(M.WatchChangesRequest(store=store)), 1.0))
        out.extend(
            await collect(
                w.b.memory.WatchChanges(
                    M.WatchChangesRequest(store=store, namespace_prefix="manual")
                ),
                0.5,
            )
        )
    return out


async def _list_stores(w: World) -> list[Message]:
    stores = await w.b.memory.ListStores(M.ListStoresRequest())
    for store in stores.stores:
        mine = await w.b.memory.List(M.ListRequest(store=store.id, include_deleted=True))
        assert store.records == len(mine.records), store
        assert store.last_sequence == max((r.sequence for r in mine.records), default=0)
    return [stores]


async def _synchronize(w: World) -> list[Message]:
    out: list[Message] = []
    for mode in (M.SYNC_MODE_FULL, M.SYNC_MODE_INCREMENTAL):
        done = await w.b.memory.Synchronize(M.SynchronizeRequest(mode=mode), timeout=60)
        assert done.run.status == M.SYNC_RUN_STATUS_SUCCEEDED, done.run.error
        out.append(done)  # conflicts, if any, are between globex's own writes
    manual = await w.b.memory.Synchronize(
        M.SynchronizeRequest(strategy=M.SYNC_STRATEGY_MANUAL, mode=M.SYNC_MODE_FULL), timeout=60
    )
    out.append(manual)
    return out


MEMORY_ROWS = [
    Row("MemorySyncService/Put", ("memory records",), "acme's key and version", _put_same_key),
    Row("MemorySyncService/BatchPut", ("memory records",), "acme's key and version",
        _batch_put_same_key),
    Row("MemorySyncService/Get", ("memory records",), "acme's key in each store",
        not_found(*_each_store(
            lambda w, s: w.b.memory.Get(M.GetRequest(namespace="manual/acme", key="c", store=s))
        ))),
    Row("MemorySyncService/Delete", ("memory records",), "acme's key in each store",
        not_found(*_each_store(
            lambda w, s: w.b.memory.Delete(
                M.DeleteRequest(namespace="manual/acme", key="c", store=s)
            )
        ))),
    Row("MemorySyncService/List", ("memory records",), "each store, deleted too, acme's token",
        answers(
            *_each_store(
                lambda w, s: w.b.memory.List(M.ListRequest(store=s, include_deleted=True))
            ),
            lambda w: w.b.memory.List(M.ListRequest(page_token=w.tokens["List"])),
        )),
    Row("MemorySyncService/Search", ("memory records",), "acme's text, tags, metadata, token",
        empty(
            "records",
            *_each_store(lambda w, s: w.b.memory.Search(M.SearchRequest(text=NEEDLE, store=s))),
            lambda w: w.b.memory.Search(M.SearchRequest(tags=["acme-tag"])),
            lambda w: w.b.memory.Search(M.SearchRequest(metadata={"owner": "acme"})),
            lambda w: w.b.memory.Search(
                M.SearchRequest(text=NEEDLE, page_token=w.tokens["Search"])
            ),
        )),
    Row("MemorySyncService/GetHistory", ("memory records",), "acme's key in each store",
        not_found(*_each_store(
            lambda w, s: w.b.memory.GetHistory(
                M.GetHistoryRequest(namespace="manual/acme", key="c", store=s)
            )
        ))),
    Row("MemorySyncService/WatchChanges", ("memory records",), "each store from the start",
        _watch_changes),
    Row("MemorySyncService/ListStores", ("memory records",), "counts are globex's own",
        _list_stores),
    Row("MemorySyncService/Synchronize", ("memory records", "sync runs", "conflicts"),
        "full, incremental and manual syncs", _synchronize),
    Row("MemorySyncService/WatchSyncRun", ("sync runs",), "acme's run",
        not_found(lambda w: w.b.memory.WatchSyncRun(M.WatchSyncRunRequest(sync_id=w.ids["sync"])))),
    Row("MemorySyncService/GetSyncRun", ("sync runs",), "acme's run",
        not_found(lambda w: w.b.memory.GetSyncRun(M.GetSyncRunRequest(sync_id=w.ids["sync"])))),
    Row("MemorySyncService/ListSyncRuns", ("sync runs",), "all and acme's page token",
        answers(
            lambda w: w.b.memory.ListSyncRuns(M.ListSyncRunsRequest()),
            lambda w: w.b.memory.ListSyncRuns(
                M.ListSyncRunsRequest(page_token=w.tokens["ListSyncRuns"])
            ),
        )),
    Row("MemorySyncService/ListConflicts", ("conflicts",), "all and acme's page token",
        answers(
            lambda w: w.b.memory.ListConflicts(M.ListConflictsRequest()),
            lambda w: w.b.memory.ListConflicts(
                M.ListConflictsRequest(page_token=w.tokens["ListConflicts"])
            ),
        )),
    Row("MemorySyncService/ListConflicts", ("conflicts",), "pending under acme's namespace",
        empty(
            "conflicts",
            lambda w: w.b.memory.ListConflicts(
                M.ListConflictsRequest(
                    status=M.CONFLICT_STATUS_PENDING, namespace_prefix="manual/acme"
                )
            ),
        )),
    Row("MemorySyncService/ResolveConflict", ("conflicts",), "acme's conflict by version and value",
        not_found(
            lambda w: w.b.memory.ResolveConflict(
                M.ResolveConflictRequest(
                    conflict_id=w.ids["conflict"], version=w.ids["conflict_version"]
                )
            ),
            lambda w: w.b.memory.ResolveConflict(
                M.ResolveConflictRequest(conflict_id=w.ids["conflict"], value=to_value("globex"))
            ),
        )),
]  # fmt: skip
