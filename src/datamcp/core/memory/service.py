"""Reads and writes of memory records (Put, Get, Delete, List, Search, ...).

Writes to a store go through its group-committing writer (``writer.py``);
a write is validated first (``model.write_op``).

``memory.*`` events of a write on a store that is the application database
commit in the write's own transaction (an outbox: no committed write without
its event). On another store they are published after the commit, best
effort; the store's change feed (``WatchChanges``) is the durable record.

Expired records are purged on the primary store: a sweep every
``purge_interval`` seconds writes a tombstone over at most ``purge_batch``
expired records, a version that follows the expired one, so the delete syncs
to the other stores like any other (they never purge on their own: one
minting store means no concurrent tombstones to conflict).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.background import cancel_and_wait, wait_at_most
from datamcp.core.errors import DataMCPError, FieldViolation, InvalidArgument, NotFound, clip
from datamcp.core.events.model import Event
from datamcp.core.memory.clock import HybridClock
from datamcp.core.memory.model import (
    PutOp,
    Record,
    check_key,
    check_namespace,
    in_prefix,
    write_op,
)
from datamcp.core.memory.ports import MemoryStore
from datamcp.core.memory.writer import MAX_BATCH, StoreWriter
from datamcp.core.paging import Fits, bad_token, decode, encode, fill, page_size
from datamcp.core.signals import LocalSignals, Signals

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], Awaitable[Any]]
SCAN_PAGE = 500


@dataclass(slots=True)
class _StoreState:
    store: MemoryStore
    writer: StoreWriter
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryService:
    """Memory records over a set of stores (one primary).

    Args:
        stores: the opened stores, primary included.
        publish: where ``memory.*`` events go (the event bus).
        history_depth: previous versions kept per key.
        max_value_bytes: largest value (JSON bytes).
        committed: called after a write committed events in its own
            transaction (the bus wakes its consumers).
        purge_interval: seconds between sweeps of expired records (0: none).
        purge_batch: most records one sweep purges.
    """

    def __init__(
        self,
        stores: Sequence[MemoryStore],
        *,
        publish: Publish | None = None,
        history_depth: int = 10,
        max_value_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.time,
        committed: Callable[[], None] | None = None,
        purge_interval: float = 60.0,
        purge_batch: int = 500,
        signals: Signals | None = None,
    ) -> None:
        self._committed = committed
        #: Watchers in other processes hear of this process's writes, and back.
        self._signals = signals or LocalSignals()
        self._signals.subscribe("memory", self._written_elsewhere)
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self._purger: asyncio.Task[None] | None = None
        self.purged = 0
        primaries = [s.id for s in stores if s.primary]
        self.primary_id = primaries[0] if primaries else stores[0].id
        self._publish = publish
        self.history_depth = history_depth
        self.max_value_bytes = max_value_bytes
        self._now = clock
        outbox = publish is not None or committed is not None
        self._states = {
            s.id: _StoreState(
                s, StoreWriter(s, HybridClock(clock), clock, history_depth, outbox, self._written)
            )
            for s in stores
        }
        self._background: set[asyncio.Task[Any]] = set()
        self.writes = 0

    # --- lifecycle ----------------------------------------------------------------

    @property
    def stores(self) -> list[MemoryStore]:
        return [s.store for s in self._states.values()]

    async def start(self) -> None:
        for state in self._states.values():
            state.writer.start()
        if self._purger is None and self.purge_interval > 0:
            self._purger = asyncio.create_task(self._purge_loop(), name="memory-purge")

    async def stop(self) -> None:
        await cancel_and_wait(self._purger)
        self._purger = None
        for state in self._states.values():
            await state.writer.stop()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def store(self, store_id: str = "", field_name: str = "store") -> MemoryStore:
        return self._state(store_id, field_name).store

    def _state(self, store_id: str, field_name: str = "store") -> _StoreState:
        state = self._states.get(store_id or self.primary_id)
        if state is None:
            raise NotFound(
                f"no memory store {clip(store_id)!r} (known: {', '.join(sorted(self._states))})",
                reason="STORE_NOT_FOUND",
                metadata={"store": store_id, "field": field_name},
            )
        return state

    def clock(self, store_id: str) -> HybridClock:
        return self._state(store_id).writer.clock

    def notify(self, store_id: str) -> None:
        """Wake change-feed watchers of a store, here and in the other
        processes (writes and sync call this after a commit)."""
        self._state(store_id).notify()
        self._signals.send("memory", store_id)

    def _written_elsewhere(self, store_id: str) -> None:
        for state in self._states.values():
            if not store_id or state.store.id == store_id:
                state.notify()

    # --- validation ---------------------------------------------------------------

    def op(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        delete: bool = False,
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
        expected_version: str = "",
        field_prefix: str = "",
    ) -> PutOp:
        """Validate one write; raises InvalidArgument listing every problem."""
        return write_op(
            namespace,
            key,
            value,
            max_value_bytes=self.max_value_bytes,
            delete=delete,
            tags=tags,
            metadata=metadata,
            ttl=ttl,
            expected_version=expected_version,
            field_prefix=field_prefix,
        )

    # --- writes -------------------------------------------------------------------

    async def write(
        self,
        tenant: str,
        ops: Sequence[PutOp],
        store_id: str = "",
        *,
        join_vv: Mapping[str, int] | None = None,
    ) -> list[Record]:
        """Apply ``ops`` atomically on a store; returns the records written."""
        if not ops:
            return []
        if len(ops) > MAX_BATCH:
            raise InvalidArgument(
                "too many entries", [FieldViolation("entries", f"at most {MAX_BATCH}")]
            )
        return await self._state(store_id).writer.write(tenant, ops, join_vv)

    async def put(self, tenant: str, op: PutOp, store_id: str = "") -> Record:
        return (await self.write(tenant, [op], store_id))[0]

    def _written(
        self, store_id: str, written: list[Record], events: list[Event], durable: bool
    ) -> None:
        """After a group commit: wake watchers, pass the events on."""
        if written:
            self.writes += len(written)
            self.notify(store_id)
        if events:
            if durable:
                if self._committed is not None:
                    self._committed()
            elif self._publish is not None:
                self.spawn(self._publish(events), "memory events")

    # --- expiry -------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """One sweep: tombstone up to ``purge_batch`` expired records of the
        primary store (each write checks the record is still the expired
        version, so a concurrent Put wins). Returns how many were purged."""
        state = self._state(self.primary_id)
        found = await state.store.expired(self._now(), self.purge_batch)
        ops = [
            (
                r.tenant,
                PutOp(r.namespace, r.key, None, expected_version=str(r.version), expire=True),
            )
            for r in found
        ]
        # One job per record (group-committed together): one refreshed record
        # fails alone.
        results = await asyncio.gather(
            *(self.write(tenant, [op]) for tenant, op in ops), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, DataMCPError):
                raise result
        done = sum(not isinstance(r, BaseException) for r in results)
        self.purged += done
        return done

    async def _purge_loop(self) -> None:
        delay = self.purge_interval
        while True:
            # A full sweep means a backlog: go on soon, leaving room for callers.
            await asyncio.sleep(delay)
            try:
                full = await self.purge_expired() >= self.purge_batch
            except Exception:
                log.warning("purging expired memory failed", exc_info=True)
                full = False
            delay = 0.1 if full else self.purge_interval

    def spawn(self, work: Awaitable[Any], what: str) -> None:
        """Run ``work`` in the background (event publishing), logging failures."""

        async def run() -> None:
            try:
                await work
            except Exception:
                log.warning("%s failed", what, exc_info=True)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- reads --------------------------------------------------------------------

    async def get(self, tenant: str, namespace: str, key: str, store_id: str = "") -> Record:
        check_namespace(namespace)
        check_key(key)
        record = await self.store(store_id).get(tenant, namespace, key)
        if record is None or not record.visible(self._now()):
            raise NotFound(
                f"no memory {namespace}/{key}",
                reason="MEMORY_NOT_FOUND",
                metadata={"namespace": namespace, "key": key},
            )
        return record

    async def list_records(
        self,
        tenant: str,
        prefix: str,
        *,
        size: int = 0,
        token: str = "",
        store_id: str = "",
        include_deleted: bool = False,
        fits: Fits | None = None,
    ) -> tuple[list[Record], str]:
        return await self._search(
            tenant,
            prefix,
            size,
            token,
            store_id=store_id,
            live_only=not include_deleted,
            fits=fits,
        )

    async def search(
        self,
        tenant: str,
        prefix: str,
        *,
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        text: str = "",
        size: int = 0,
        token: str = "",
        store_id: str = "",
        fits: Fits | None = None,
    ) -> tuple[list[Record], str]:
        return await self._search(
            tenant,
            prefix,
            size,
            token,
            store_id=store_id,
            tags=tags,
            metadata=dict(metadata or {}),
            text=text,
            fits=fits,
        )

    async def _search(
        self,
        tenant: str,
        prefix: str,
        size: int,
        token: str,
        *,
        store_id: str,
        live_only: bool = True,
        tags: Sequence[str] = (),
        metadata: dict[str, str] | None = None,
        text: str = "",
        fits: Fits | None = None,
    ) -> tuple[list[Record], str]:
        """A page of matches, filtered by the store (so a page is full while
        matches remain) and cut where ``fits`` says (see ``paging.fill``);
        the token is the last (namespace, key) returned."""
        check_namespace(prefix, "namespace_prefix", prefix=True)
        limit = page_size(size)
        store = self.store(store_id)
        page = await store.search(
            tenant,
            prefix,
            _position(token),
            limit,
            now=self._now(),
            live_only=live_only,
            tags=tags,
            metadata=metadata,
            text_contains=text.lower(),
        )
        page, more = fill(page, len(page) == limit, fits)
        return page, encode(list(page[-1].ident)) if more and page else ""

    async def history(
        self,
        tenant: str,
        namespace: str,
        key: str,
        *,
        size: int = 0,
        store_id: str = "",
        fits: Fits | None = None,
    ) -> list[Record]:
        """The current version then older ones, newest first: at most
        ``size``, and no more than ``fits`` takes (see ``paging.fill``)."""
        check_namespace(namespace)
        check_key(key)
        limit = page_size(size)
        store = self.store(store_id)
        current = await store.get(tenant, namespace, key)
        if current is None:
            raise NotFound(
                f"no memory {namespace}/{key}",
                reason="MEMORY_NOT_FOUND",
                metadata={"namespace": namespace, "key": key},
            )
        older = await store.history(tenant, namespace, key, limit - 1) if limit > 1 else []
        return fill([current, *older], False, fits)[0]

    async def watch(
        self, tenant: str, prefix: str, from_seq: int, store_id: str = ""
    ) -> AsyncIterator[Record]:
        """Every version written after ``from_seq`` (that the history still
        keeps: ``memory.history_depth`` per key), in write order, forever;
        woken by writes of this process and, by signal, of the others (a
        poll every second is the fallback)."""
        check_namespace(prefix, "namespace_prefix", prefix=True)
        if from_seq < 0:
            raise InvalidArgument(
                "invalid from_sequence", [FieldViolation("from_sequence", "must be >= 0")]
            )
        state = self._state(store_id)
        cursor = from_seq
        while True:
            changed = state.changed
            page, last = await state.store.changes(tenant, cursor, SCAN_PAGE, prefix, versions=True)
            for record in page:
                yield record
            moved, cursor = last != cursor, last
            if not moved:
                await wait_at_most(changed, 1.0)


def _position(token: str) -> tuple[str, str] | None:
    value = decode(token)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise bad_token()
    return value[0], value[1]


class AgentMemory:
    """The :class:`MemoryPort` the ``memory`` agent uses, over the primary store."""

    def __init__(self, service: MemoryService) -> None:
        self._service = service

    async def put(self, tenant: str, namespace: str, key: str, value: Any) -> dict[str, Any]:
        op = self._service.op(namespace, key, value)
        return (await self._service.put(tenant, op)).to_dict()

    async def get(self, tenant: str, namespace: str, key: str) -> dict[str, Any] | None:
        try:
            return (await self._service.get(tenant, namespace, key)).to_dict()
        except NotFound:
            return None

    async def search(
        self, tenant: str, namespace: str, text: str, limit: int
    ) -> list[dict[str, Any]]:
        records, _ = await self._service.search(tenant, namespace, text=text, size=limit)
        return [r.to_dict() for r in records if in_prefix(r.namespace, namespace)]


__all__ = ["AgentMemory", "MemoryService", "Publish"]
