"""What the memory core needs from storage: memory stores and the sync ledger."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from datamcp.core.events.model import Event
from datamcp.core.memory.model import Conflict, ConflictStatus, Record, SyncRun


class StoreTx(Protocol):
    """One write transaction on a store; nothing is kept unless committed.

    A write transaction holds the store's write lock from its start, so a
    read-modify-write inside it cannot lose an update.
    """

    async def get_many(
        self, tenant: str, idents: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Record]: ...

    async def write(
        self, records: Sequence[Record], replaced: Sequence[Record], history_depth: int
    ) -> None:
        """Upsert ``records`` (assigning each a new ``seq``, in order) and keep
        ``replaced`` (their previous versions) in the history."""
        ...

    async def set_checkpoint(self, replication: str, seq: int) -> None: ...

    async def add_events(self, events: Sequence[Event]) -> bool:
        """Store ``events`` on the event bus's table in this transaction (a
        transactional outbox). False, storing nothing, when the store is not
        the application database."""
        ...

    async def commit(self) -> None: ...


class MemoryStore(Protocol):
    """One store of memory records with a monotonic change sequence."""

    @property
    def id(self) -> str: ...

    @property
    def primary(self) -> bool: ...

    @property
    def url(self) -> str:
        """The URL with any password hidden."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTx]: ...

    async def get(self, tenant: str, namespace: str, key: str) -> Record | None: ...

    async def changes(
        self,
        tenant: str,
        after: int,
        limit: int,
        prefix: str = "",
        skip_via: str = "",
        *,
        versions: bool = False,
    ) -> tuple[list[Record], int]:
        """Up to ``limit`` positions of the feed after ``after``: the records there
        (in ``seq`` order) under ``prefix`` not copied from ``skip_via``, and the
        last position read (``after`` when the feed holds nothing newer). With
        ``versions``, every version written after ``after`` that the history
        still keeps, not only each key's latest (the change log a watcher reads)."""
        ...

    async def pending(self, tenant: str, after: int) -> int:
        """How many of the tenant's records changed after ``after``."""
        ...

    async def scan(
        self, tenant: str, prefix: str, after: tuple[str, str] | None, limit: int
    ) -> list[Record]:
        """Records under ``prefix`` in (namespace, key) order, after ``after``."""
        ...

    async def search(
        self,
        tenant: str,
        prefix: str,
        after: tuple[str, str] | None,
        limit: int,
        *,
        now: float,
        live_only: bool = True,
        tags: Sequence[str] = (),
        metadata: dict[str, str] | None = None,
        text_contains: str = "",
    ) -> list[Record]:
        """Like :meth:`scan`, filtered in the store: live only (not deleted,
        not expired at ``now``), holding every tag and metadata pair, and
        ``text_contains`` (lower case) in the key or the value's JSON."""
        ...

    async def expired(self, now: float, limit: int) -> list[Record]:
        """Up to ``limit`` records (any tenant) expired at ``now`` and not deleted."""
        ...

    async def history(self, tenant: str, namespace: str, key: str, limit: int) -> list[Record]: ...

    async def checkpoint(self, replication: str) -> int: ...

    async def set_checkpoint(self, replication: str, seq: int) -> None: ...

    async def stats(self, tenant: str) -> tuple[int, int]:
        """(last seq of the tenant, records of the tenant)."""
        ...


class SyncLedger(Protocol):
    """Sync runs, conflicts and schedule marks, kept in the application database."""

    async def add_run(self, run: SyncRun) -> None: ...

    async def save_run(self, run: SyncRun) -> None: ...

    async def get_run(self, tenant: str, run_id: str) -> SyncRun | None: ...

    async def list_runs(
        self, tenant: str, before: tuple[float, str] | None, limit: int
    ) -> list[SyncRun]: ...

    async def running_runs(self) -> list[SyncRun]: ...

    async def add_conflicts(self, conflicts: Sequence[Conflict]) -> int:
        """Store conflicts not stored yet (by id); returns how many were new."""
        ...

    async def get_conflict(self, tenant: str, conflict_id: str) -> Conflict | None: ...

    async def list_conflicts(
        self,
        tenant: str,
        status: ConflictStatus,
        prefix: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Conflict]: ...

    async def pending_for_key(self, tenant: str, namespace: str, key: str) -> list[Conflict]: ...

    async def mark_resolved(
        self, tenant: str, ids: Sequence[str], winner: str, at: float
    ) -> None: ...

    async def claim_schedule(self, name: str, due: float) -> bool:
        """Record that schedule ``name`` fired for ``due``; False when it already had."""
        ...
