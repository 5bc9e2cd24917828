"""``client.memory``: versioned records across stores and their sync (MemorySyncService).

Example:
    record = await client.memory.put("agents/planner", "goal", {"text": "ship"})
    again = await client.memory.get("agents/planner", "goal")
    assert again.value == {"text": "ship"} and again.version == record.version
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from datamcp.v1 import memory_pb2, memory_pb2_grpc
from datamcp_client._rpc import (
    Connection,
    enum_value,
    fill_duration,
    paged,
    to_datetime,
    to_seconds,
)
from datamcp_client._values import JSON, fill_value, from_value


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """A version of a record. ``value`` is plain JSON."""

    namespace: str
    key: str
    value: JSON
    tags: tuple[str, ...]
    metadata: dict[str, str]
    version: str
    deleted: bool
    store: str
    sequence: int
    create_time: datetime | None
    update_time: datetime | None
    expire_time: datetime | None

    @classmethod
    def from_proto(cls, r: memory_pb2.MemoryRecord) -> MemoryRecord:
        return cls(
            namespace=r.namespace,
            key=r.key,
            value=from_value(r.value),
            tags=tuple(r.tags),
            metadata=dict(r.metadata),
            version=r.version,
            deleted=r.deleted,
            store=r.store,
            sequence=r.sequence,
            create_time=to_datetime(r.create_time),
            update_time=to_datetime(r.update_time),
            expire_time=to_datetime(r.expire_time),
        )


@dataclass(frozen=True, slots=True)
class StoreInfo:
    id: str
    url: str
    primary: bool
    healthy: bool
    error: str
    last_sequence: int
    lag: int
    records: int


class SyncStatus(enum.Enum):
    UNSPECIFIED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    INTERRUPTED = 4

    @property
    def done(self) -> bool:
        return self.value >= SyncStatus.SUCCEEDED.value


_SYNC_STATUS = {s.value: s for s in SyncStatus}


@dataclass(frozen=True, slots=True)
class SyncRun:
    id: str
    status: SyncStatus
    strategy: str
    mode: str
    stores: tuple[str, ...]
    dry_run: bool
    records_read: int
    records_synced: int
    conflicts_detected: int
    conflicts_resolved: int
    conflicts_pending: int
    duration: float
    error: str
    start_time: datetime | None
    end_time: datetime | None

    @property
    def done(self) -> bool:
        return self.status.done

    @classmethod
    def from_proto(cls, r: memory_pb2.SyncRun) -> SyncRun:
        return cls(
            id=r.sync_id,
            status=_SYNC_STATUS[r.status],
            strategy=memory_pb2.SyncStrategy.Name(r.strategy)
            .removeprefix("SYNC_STRATEGY_")
            .lower(),
            mode=memory_pb2.SyncMode.Name(r.mode).removeprefix("SYNC_MODE_").lower(),
            stores=tuple(r.stores),
            dry_run=r.dry_run,
            records_read=r.records_read,
            records_synced=r.records_synced,
            conflicts_detected=r.conflicts_detected,
            conflicts_resolved=r.conflicts_resolved,
            conflicts_pending=r.conflicts_pending,
            duration=to_seconds(r.duration),
            error=r.error,
            start_time=to_datetime(r.start_time),
            end_time=to_datetime(r.end_time),
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    id: str
    namespace: str
    key: str
    status: str
    strategy: str
    versions: tuple[MemoryRecord, ...]
    winner: str
    detect_time: datetime | None

    @classmethod
    def from_proto(cls, c: memory_pb2.Conflict) -> Conflict:
        return cls(
            id=c.id,
            namespace=c.namespace,
            key=c.key,
            status=memory_pb2.ConflictStatus.Name(c.status)
            .removeprefix("CONFLICT_STATUS_")
            .lower(),
            strategy=memory_pb2.SyncStrategy.Name(c.strategy)
            .removeprefix("SYNC_STRATEGY_")
            .lower(),
            versions=tuple(MemoryRecord.from_proto(v) for v in c.versions),
            winner=c.winner,
            detect_time=to_datetime(c.detect_time),
        )


class MemoryClient:
    """Memory records and sync. Reached as ``client.memory``."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._stub = memory_pb2_grpc.MemorySyncServiceStub(connection.channel)

    async def put(
        self,
        namespace: str,
        key: str,
        value: JSON,
        *,
        tags: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
        expected_version: str = "",
        store: str = "",
    ) -> MemoryRecord:
        """Write a new version. With ``expected_version`` it is a compare-and-set
        (AbortedError, ``metadata["current_version"]``, when another write won).
        Not retried: a repeated put would add a version."""
        request = memory_pb2.PutRequest(
            namespace=namespace,
            key=key,
            tags=list(tags),
            metadata=dict(metadata or {}),
            expected_version=expected_version,
            store=store,
        )
        fill_value(request.value, value)
        if ttl is not None:
            fill_duration(request.ttl, ttl)
        r = await self._conn.unary(self._stub.Put, request, idempotent=False)
        return MemoryRecord.from_proto(r.record)

    async def get(self, namespace: str, key: str, *, store: str = "") -> MemoryRecord:
        """The current version (NotFoundError when absent, deleted or expired)."""
        r = await self._conn.unary(
            self._stub.Get,
            memory_pb2.GetRequest(namespace=namespace, key=key, store=store),
            idempotent=True,
        )
        return MemoryRecord.from_proto(r.record)

    async def delete(
        self, namespace: str, key: str, *, expected_version: str = "", store: str = ""
    ) -> MemoryRecord:
        """Write a tombstone (it syncs like any write); answers the tombstone."""
        r = await self._conn.unary(
            self._stub.Delete,
            memory_pb2.DeleteRequest(
                namespace=namespace, key=key, expected_version=expected_version, store=store
            ),
            idempotent=False,
        )
        return MemoryRecord.from_proto(r.record)

    def list(
        self, namespace_prefix: str = "", *, store: str = "", limit: int | None = None
    ) -> AsyncIterator[MemoryRecord]:
        """Live records under a namespace prefix, in key order."""

        async def fetch(token: str) -> tuple[builtins.list[MemoryRecord], str]:
            r = await self._conn.unary(
                self._stub.List,
                memory_pb2.ListRequest(
                    namespace_prefix=namespace_prefix, store=store, page_token=token
                ),
                idempotent=True,
            )
            return [MemoryRecord.from_proto(x) for x in r.records], r.next_page_token

        return paged(fetch, limit)

    def search(
        self,
        namespace_prefix: str = "",
        *,
        text: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        store: str = "",
        limit: int | None = None,
    ) -> AsyncIterator[MemoryRecord]:
        """Records matching every given tag, metadata entry and text (case-insensitive)."""
        wanted_tags = list(tags)

        async def fetch(token: str) -> tuple[builtins.list[MemoryRecord], str]:
            r = await self._conn.unary(
                self._stub.Search,
                memory_pb2.SearchRequest(
                    namespace_prefix=namespace_prefix,
                    text=text,
                    tags=wanted_tags,
                    metadata=dict(metadata or {}),
                    store=store,
                    page_token=token,
                ),
                idempotent=True,
            )
            return [MemoryRecord.from_proto(x) for x in r.records], r.next_page_token

        return paged(fetch, limit)

    async def history(
        self, namespace: str, key: str, *, store: str = "", limit: int = 0
    ) -> builtins.list[MemoryRecord]:
        """Previous versions of a key, newest first."""
        r = await self._conn.unary(
            self._stub.GetHistory,
            memory_pb2.GetHistoryRequest(
                namespace=namespace, key=key, store=store, page_size=limit
            ),
            idempotent=True,
        )
        return [MemoryRecord.from_proto(v) for v in r.versions]

    async def stores(self) -> builtins.list[StoreInfo]:
        r = await self._conn.unary(
            self._stub.ListStores, memory_pb2.ListStoresRequest(), idempotent=True
        )
        return [
            StoreInfo(s.id, s.url, s.primary, s.healthy, s.error, s.last_sequence, s.lag, s.records)
            for s in r.stores
        ]

    async def sync(
        self,
        *,
        stores: Iterable[str] = (),
        strategy: str = "",
        mode: str = "",
        dry_run: bool = False,
        namespace_prefix: str = "",
        priority: Iterable[str] = (),
        background: bool = False,
    ) -> SyncRun:
        """Synchronise stores (all when none are named).

        Args:
            strategy: timestamp_wins / source_priority / merge / manual (empty:
                the configured policy).
            mode: incremental (default) or full.
            background: answer at once with the RUNNING run; follow it with
                :meth:`watch_sync`.
        """
        request = memory_pb2.SynchronizeRequest(
            stores=list(stores),
            dry_run=dry_run,
            namespace_prefix=namespace_prefix,
            priority=list(priority),
            background=background,
        )
        if strategy:
            request.strategy = enum_value(strategy, memory_pb2.SyncStrategy, "SYNC_STRATEGY_")  # type: ignore[assignment]
        if mode:
            request.mode = enum_value(mode, memory_pb2.SyncMode, "SYNC_MODE_")  # type: ignore[assignment]
        r = await self._conn.unary(self._stub.Synchronize, request, idempotent=False, timeout=None)
        return SyncRun.from_proto(r.run)

    async def watch_sync(self, sync_id: str) -> AsyncIterator[SyncRun]:
        """Yield a sync run as it progresses, ending after it has ended."""
        call = self._stub.WatchSyncRun(
            memory_pb2.WatchSyncRunRequest(sync_id=sync_id), metadata=self._conn.metadata
        )
        async for item in self._conn.stream(call):
            yield SyncRun.from_proto(item.run)

    async def get_sync_run(self, sync_id: str) -> SyncRun:
        r = await self._conn.unary(
            self._stub.GetSyncRun, memory_pb2.GetSyncRunRequest(sync_id=sync_id), idempotent=True
        )
        return SyncRun.from_proto(r.run)

    def conflicts(
        self, *, status: str = "pending", namespace_prefix: str = "", limit: int | None = None
    ) -> AsyncIterator[Conflict]:
        """Conflicts (``pending``, ``resolved`` or ``""`` for all)."""
        wanted = enum_value(status, memory_pb2.ConflictStatus, "CONFLICT_STATUS_") if status else 0

        async def fetch(token: str) -> tuple[builtins.list[Conflict], str]:
            r = await self._conn.unary(
                self._stub.ListConflicts,
                memory_pb2.ListConflictsRequest(
                    status=wanted,  # type: ignore[arg-type]
                    namespace_prefix=namespace_prefix,
                    page_token=token,
                ),
                idempotent=True,
            )
            return [Conflict.from_proto(c) for c in r.conflicts], r.next_page_token

        return paged(fetch, limit)

    async def resolve(
        self, conflict_id: str, *, version: str = "", value: JSON = None, use_value: bool = False
    ) -> tuple[Conflict, MemoryRecord]:
        """Settle a queued conflict by picking a ``version``, or by writing ``value``
        (pass ``use_value=True`` to write a JSON null)."""
        request = memory_pb2.ResolveConflictRequest(conflict_id=conflict_id, version=version)
        if value is not None or use_value:
            fill_value(request.value, value)
        r = await self._conn.unary(self._stub.ResolveConflict, request, idempotent=False)
        return Conflict.from_proto(r.conflict), MemoryRecord.from_proto(r.record)
