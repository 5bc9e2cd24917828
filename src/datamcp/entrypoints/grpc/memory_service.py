"""datamcp.v1.MemorySyncService: translate, delegate to core.memory, translate back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from datamcp.core.context import current_tenant
from datamcp.core.errors import DataMCPError, FieldViolation, InvalidArgument
from datamcp.core.memory.model import Record
from datamcp.core.memory.ports import MemoryStore
from datamcp.core.memory.replicate import replication_lag
from datamcp.core.memory.system import MemorySystem
from datamcp.entrypoints.grpc.convert import Packer, page_bytes
from datamcp.entrypoints.grpc.memory_convert import (
    conflict_status,
    conflict_to_proto,
    record_to_proto,
    run_to_proto,
    sync_request,
    ttl_seconds,
)
from datamcp.entrypoints.grpc.values import from_value
from datamcp.v1 import memory_pb2 as pb
from datamcp.v1 import memory_pb2_grpc

log = logging.getLogger(__name__)


def _value(message: Any, field: str = "value") -> Any:
    if not message.HasField("value"):
        raise InvalidArgument(
            "a value is required", [FieldViolation(field, "set a JSON value (null is allowed)")]
        )
    return from_value(message.value, field)


class MemorySyncService(memory_pb2_grpc.MemorySyncServiceServicer):
    """Args:
    memory: the memory system (service, sync).
    page_bytes: most bytes the items of one answer take (``convert.page_bytes``).
    """

    def __init__(self, memory: MemorySystem, page_bytes: int = page_bytes(4 << 20)) -> None:
        self._memory = memory
        self._service = memory.service
        self._sync = memory.sync
        self._page_bytes = page_bytes

    def _out(self, record: Record, store: str) -> pb.MemoryRecord:
        return record_to_proto(record, store or self._service.primary_id)

    def _records(self, store: str) -> Packer[Record, pb.MemoryRecord]:
        return Packer(lambda r: self._out(r, store), self._page_bytes)

    async def Put(self, request: pb.PutRequest, context: aio.ServicerContext) -> pb.PutResponse:
        op = self._service.op(
            request.namespace,
            request.key,
            _value(request),
            tags=list(request.tags),
            metadata=dict(request.metadata),
            ttl=ttl_seconds(request),
            expected_version=request.expected_version,
        )
        record = await self._service.put(current_tenant(), op, request.store)
        return pb.PutResponse(record=self._out(record, request.store))

    async def Get(self, request: pb.GetRequest, context: aio.ServicerContext) -> pb.GetResponse:
        record = await self._service.get(
            current_tenant(), request.namespace, request.key, request.store
        )
        return pb.GetResponse(record=self._out(record, request.store))

    async def Delete(
        self, request: pb.DeleteRequest, context: aio.ServicerContext
    ) -> pb.DeleteResponse:
        op = self._service.op(
            request.namespace,
            request.key,
            None,
            delete=True,
            expected_version=request.expected_version,
        )
        record = await self._service.put(current_tenant(), op, request.store)
        return pb.DeleteResponse(record=self._out(record, request.store))

    async def List(self, request: pb.ListRequest, context: aio.ServicerContext) -> pb.ListResponse:
        page = self._records(request.store)
        _, token = await self._service.list_records(
            current_tenant(),
            request.namespace_prefix,
            size=request.page_size,
            token=request.page_token,
            store_id=request.store,
            include_deleted=request.include_deleted,
            fits=page,
        )
        return pb.ListResponse(records=page.messages, next_page_token=token)

    async def Search(
        self, request: pb.SearchRequest, context: aio.ServicerContext
    ) -> pb.SearchResponse:
        page = self._records(request.store)
        _, token = await self._service.search(
            current_tenant(),
            request.namespace_prefix,
            tags=list(request.tags),
            metadata=dict(request.metadata),
            text=request.text,
            size=request.page_size,
            token=request.page_token,
            store_id=request.store,
            fits=page,
        )
        return pb.SearchResponse(records=page.messages, next_page_token=token)

    async def BatchPut(
        self, request: pb.BatchPutRequest, context: aio.ServicerContext
    ) -> pb.BatchPutResponse:
        if not request.entries:
            raise InvalidArgument("no entries", [FieldViolation("entries", "at least one entry")])
        ops = []
        violations: list[FieldViolation] = []
        for i, e in enumerate(request.entries):
            prefix = f"entries[{i}]."
            try:
                ops.append(
                    self._service.op(
                        e.namespace,
                        e.key,
                        _value(e, f"{prefix}value"),
                        tags=list(e.tags),
                        metadata=dict(e.metadata),
                        ttl=ttl_seconds(e, prefix),
                        expected_version=e.expected_version,
                        field_prefix=prefix,
                    )
                )
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        if violations:
            raise InvalidArgument("invalid entries", violations, reason="INVALID_MEMORY_WRITE")
        records = await self._service.write(current_tenant(), ops, request.store)
        return pb.BatchPutResponse(records=[self._out(r, request.store) for r in records])

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: aio.ServicerContext
    ) -> pb.GetHistoryResponse:
        page = self._records(request.store)
        await self._service.history(
            current_tenant(),
            request.namespace,
            request.key,
            size=request.page_size,
            store_id=request.store,
            fits=page,
        )
        return pb.GetHistoryResponse(versions=page.messages)

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        store = self._service.store(request.store).id
        async for record in self._service.watch(
            current_tenant(), request.namespace_prefix, request.from_sequence, request.store
        ):
            yield pb.WatchChangesResponse(record=record_to_proto(record, store))

    async def ListStores(
        self, request: pb.ListStoresRequest, context: aio.ServicerContext
    ) -> pb.ListStoresResponse:
        tenant = current_tenant()
        stores = self._service.stores
        primary = self._service.store()

        async def describe(store: MemoryStore) -> pb.MemoryStore:
            out = pb.MemoryStore(id=store.id, url=store.url, primary=store.id == primary.id)
            try:
                out.last_sequence, out.records = await store.stats(tenant)
                out.lag = await replication_lag(tenant, store, primary, stores)
                out.healthy = True
            except Exception as exc:
                out.healthy = False
                if isinstance(exc, DataMCPError):  # an outage, as the store translated it
                    out.error = exc.message
                else:  # the text of anything else is for the log, not the caller
                    error_id = os.urandom(6).hex()
                    log.warning(
                        "memory store stats failed", exc_info=exc, extra={"error_id": error_id}
                    )
                    out.error = f"memory store {store.id} failed (error id {error_id})"
            return out

        described = await asyncio.gather(*(describe(s) for s in stores))
        return pb.ListStoresResponse(stores=list(described))

    async def Synchronize(
        self, request: pb.SynchronizeRequest, context: aio.ServicerContext
    ) -> pb.SynchronizeResponse:
        run = await self._sync.synchronize(
            current_tenant(), sync_request(request), wait=not request.background
        )
        return pb.SynchronizeResponse(run=run_to_proto(run))

    async def WatchSyncRun(
        self, request: pb.WatchSyncRunRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchSyncRunResponse]:
        async for run in self._sync.watch(current_tenant(), request.sync_id):
            yield pb.WatchSyncRunResponse(run=run_to_proto(run))

    async def GetSyncRun(
        self, request: pb.GetSyncRunRequest, context: aio.ServicerContext
    ) -> pb.GetSyncRunResponse:
        run = await self._sync.get_run(current_tenant(), request.sync_id)
        return pb.GetSyncRunResponse(run=run_to_proto(run))

    async def ListSyncRuns(
        self, request: pb.ListSyncRunsRequest, context: aio.ServicerContext
    ) -> pb.ListSyncRunsResponse:
        runs, token = await self._sync.list_runs(
            current_tenant(), request.page_size, request.page_token
        )
        return pb.ListSyncRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    async def ListConflicts(
        self, request: pb.ListConflictsRequest, context: aio.ServicerContext
    ) -> pb.ListConflictsResponse:
        page = Packer(conflict_to_proto, self._page_bytes)
        _, token = await self._sync.list_conflicts(
            current_tenant(),
            conflict_status(request.status),
            request.namespace_prefix,
            request.page_size,
            request.page_token,
            fits=page,
        )
        return pb.ListConflictsResponse(conflicts=page.messages, next_page_token=token)

    async def ResolveConflict(
        self, request: pb.ResolveConflictRequest, context: aio.ServicerContext
    ) -> pb.ResolveConflictResponse:
        value_json = None
        if request.HasField("value"):
            value_json = json.dumps(from_value(request.value, "value"), separators=(",", ":"))
        conflict, record = await self._sync.resolve(
            current_tenant(), request.conflict_id, version=request.version, value_json=value_json
        )
        return pb.ResolveConflictResponse(
            conflict=conflict_to_proto(conflict),
            record=record_to_proto(record, self._service.primary_id),
        )
