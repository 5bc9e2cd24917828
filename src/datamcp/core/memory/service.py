"""Reads and writes of memory records (Put, Get, Delete, List, Search, ...).

Writes to a store go through one writer task per store that group-commits:
while a transaction is in flight, later writes queue and go into the next
one together, each checked against the state it would land on (expected
version, existence). A failed write fails only its own job; a BatchPut is one
job, so it is all or nothing.

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
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.background import cancel_and_wait, wait_at_most
from datamcp.core.errors import (
    Conflict,
    DataMCPError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    clip,
)
from datamcp.core.events.model import Event
from datamcp.core.memory.clock import HybridClock, join
from datamcp.core.memory.model import (
    MAX_TTL,
    PutOp,
    Record,
    check_key,
    check_labels,
    check_namespace,
    dumps,
    in_prefix,
)
from datamcp.core.memory.ports import MemoryStore
from datamcp.core.paging import Fits, bad_token, decode, encode, fill, page_size
from datamcp.core.signals import LocalSignals, Signals

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], Awaitable[Any]]
_Done = list[list[Record] | DataMCPError]
MAX_BATCH = 1000
SCAN_PAGE = 500


@dataclass(slots=True)
class _Job:
    tenant: str
    ops: list[PutOp]
    future: asyncio.Future[list[Record]]
    join_vv: Mapping[str, int] | None = None


@dataclass(slots=True)
class _StoreState:
    store: MemoryStore
    clock: HybridClock = field(default_factory=HybridClock)
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def event_id(kind: str, tenant: str, record: Record) -> str:
    raw = f"{kind}:{tenant}/{record.namespace}/{record.key}@{record.version}"
    return raw if len(raw) <= 128 else f"{kind}:{hashlib.sha256(raw.encode()).hexdigest()}"


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
        self._states = {s.id: _StoreState(s, HybridClock(clock)) for s in stores}
        primaries = [s.id for s in stores if s.primary]
        self.primary_id = primaries[0] if primaries else stores[0].id
        self._publish = publish
        self.history_depth = history_depth
        self.max_value_bytes = max_value_bytes
        self._now = clock
        self._background: set[asyncio.Task[Any]] = set()
        self.writes = 0

    # --- lifecycle ----------------------------------------------------------------

    @property
    def stores(self) -> list[MemoryStore]:
        return [s.store for s in self._states.values()]

    async def start(self) -> None:
        for state in self._states.values():
            if state.writer is None:
                state.writer = asyncio.create_task(
                    self._write_loop(state), name=f"memory-writer:{state.store.id}"
                )
        if self._purger is None and self.purge_interval > 0:
            self._purger = asyncio.create_task(self._purge_loop(), name="memory-purge")

    async def stop(self) -> None:
        await cancel_and_wait(self._purger)
        self._purger = None
        for state in self._states.values():
            await cancel_and_wait(state.writer)
            state.writer = None
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
        return self._state(store_id).clock

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
        bad: list[FieldViolation] = []
        try:
            check_namespace(namespace, f"{field_prefix}namespace")
        except InvalidArgument as exc:
            bad.extend(exc.violations)
        try:
            check_key(key, f"{field_prefix}key")
        except InvalidArgument as exc:
            bad.extend(exc.violations)
        metadata = dict(metadata or {})
        bad.extend(check_labels(tags, metadata, field_prefix))
        value_json: str | None = None
        if not delete:
            try:
                value_json = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                bad.append(FieldViolation(f"{field_prefix}value", "must be JSON"))
            else:
                size = len(value_json.encode("utf-8"))
                if size > self.max_value_bytes:
                    bad.append(
                        FieldViolation(
                            f"{field_prefix}value",
                            f"{size} bytes is over the {self.max_value_bytes}-byte limit "
                            "(memory.max_value_bytes)",
                        )
                    )
        if ttl is not None and not 0 < ttl <= MAX_TTL:  # also NaN
            bad.append(
                FieldViolation(
                    f"{field_prefix}ttl", "when given, more than 0s and at most 100 years"
                )
            )
        if bad:
            raise InvalidArgument("invalid memory write", bad, reason="INVALID_MEMORY_WRITE")
        return PutOp(
            namespace,
            key,
            value_json,
            tuple(tags),
            metadata,
            ttl,
            expected_version,
            field_prefix,
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
        state = self._state(store_id)
        if state.writer is None:
            raise Unavailable("the memory service is not running", reason="MEMORY_STOPPED")
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        state.queue.put_nowait(_Job(tenant, list(ops), future, join_vv))
        return await asyncio.shield(future)

    async def put(self, tenant: str, op: PutOp, store_id: str = "") -> Record:
        return (await self.write(tenant, [op], store_id))[0]

    async def _write_loop(self, state: _StoreState) -> None:
        while True:
            jobs = [await state.queue.get()]
            count = len(jobs[0].ops)
            while count < MAX_BATCH and not state.queue.empty():
                job = state.queue.get_nowait()
                jobs.append(job)
                count += len(job.ops)
            try:
                await self._settle(state, jobs)
            finally:
                for _ in jobs:
                    state.queue.task_done()

    async def _settle(self, state: _StoreState, jobs: list[_Job]) -> None:
        """Commit ``jobs`` and answer each. A commit that fails for anything
        but an outage is retried in halves until the offending job fails
        alone: one caller's write never fails another's (the event bus does
        the same)."""
        try:
            done, events, durable = await self._commit(state, jobs)
        except Unavailable as exc:
            log.warning("memory store write failed", exc_info=exc)
            _fail(jobs, exc)
            return
        except Exception as exc:
            if len(jobs) > 1:
                middle = len(jobs) // 2
                await self._settle(state, jobs[:middle])
                await self._settle(state, jobs[middle:])
                return
            log.error("a memory write could not be stored", exc_info=exc)
            _fail(jobs, exc)
            return
        written: list[Record] = []
        for job, result in zip(jobs, done, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
                written.extend(result)
        if written:
            self.writes += len(written)
            self.notify(state.store.id)
        if events:
            if durable:
                if self._committed is not None:
                    self._committed()
            elif self._publish is not None:
                self.spawn(self._publish(events), "memory events")

    async def _commit(
        self, state: _StoreState, jobs: list[_Job]
    ) -> tuple[_Done, list[Event], bool]:
        results: _Done = []
        events: list[Event] = []
        durable = False
        now = self._now()
        async with state.store.transaction() as tx:
            current: dict[tuple[str, str, str], Record | None] = {}
            by_tenant: dict[str, set[tuple[str, str]]] = {}
            for job in jobs:
                by_tenant.setdefault(job.tenant, set()).update(
                    (o.namespace, o.key) for o in job.ops
                )
            for tenant, idents in by_tenant.items():
                found = await tx.get_many(tenant, sorted(idents))
                for ns, key in idents:
                    current[(tenant, ns, key)] = found.get((ns, key))
            writes: dict[tuple[str, str, str], Record] = {}
            replaced: list[Record] = []
            for job in jobs:
                overlay: dict[tuple[str, str, str], Record] = {}
                try:
                    for op in job.ops:
                        slot = (job.tenant, op.namespace, op.key)
                        cur = overlay.get(slot) or writes.get(slot) or current[slot]
                        overlay[slot] = self._apply(
                            state, job.tenant, op, cur, now=now, join_vv=job.join_vv
                        )
                except DataMCPError as exc:
                    results.append(exc)
                    continue
                for slot, record in overlay.items():
                    previous = writes.get(slot) or current[slot]
                    if previous is not None:
                        replaced.append(previous)
                    writes[slot] = record
                done = [overlay[(job.tenant, o.namespace, o.key)] for o in job.ops]
                results.append(done)
                events.extend(
                    self._event(state.store.id, r, expired=o.expire)
                    for o, r in zip(job.ops, done, strict=True)
                )
            if writes:
                await tx.write(list(writes.values()), replaced, self.history_depth)
                if self._publish is not None or self._committed is not None:
                    durable = await tx.add_events(events)
                await tx.commit()
        return results, events, durable

    def _apply(
        self,
        state: _StoreState,
        tenant: str,
        op: PutOp,
        cur: Record | None,
        *,
        now: float,
        join_vv: Mapping[str, int] | None,
    ) -> Record:
        if op.expected_version:
            current_version = str(cur.version) if cur is not None else ""
            if current_version != op.expected_version:
                raise Conflict(
                    f"{op.namespace}/{op.key} is at version {current_version or '(none)'}, "
                    f"not {op.expected_version}; read it again and retry",
                    reason="VERSION_MISMATCH",
                    metadata={
                        "namespace": op.namespace,
                        "key": op.key,
                        "current_version": current_version,
                        "expected_version": op.expected_version,
                    },
                )
        live = cur is not None and cur.visible(now)
        if op.expire and (cur is None or cur.deleted or not cur.expired(now)):
            raise Conflict(
                f"{op.namespace}/{op.key} is no longer expired",
                reason="NOT_EXPIRED",
                metadata={"namespace": op.namespace, "key": op.key},
            )
        if op.value_json is None and not live and not join_vv and not op.expire:
            raise NotFound(
                f"no memory {op.namespace}/{op.key}",
                reason="MEMORY_NOT_FOUND",
                metadata={"namespace": op.namespace, "key": op.key},
            )
        after = cur.hlc if cur is not None else 0
        vv = dict(cur.vv) if cur is not None else {}
        if join_vv:
            vv = join(vv, join_vv)
            after = max(after, *join_vv.values())
        hlc = state.clock.now(after)
        vv[state.store.id] = hlc
        return Record(
            tenant=tenant,
            namespace=op.namespace,
            key=op.key,
            value_json=op.value_json,
            hlc=hlc,
            origin=state.store.id,
            vv=vv,
            tags=op.tags if op.value_json is not None else (),
            metadata=dict(op.metadata) if op.value_json is not None else {},
            created_at=cur.created_at if cur is not None and live else now,
            updated_at=now,
            expires_at=now + op.ttl if op.ttl else None,
            deleted=op.value_json is None,
            base_json=cur.value_json if cur is not None and not cur.deleted else None,
        )

    @staticmethod
    def _event(store_id: str, r: Record, *, expired: bool = False) -> Event:
        kind = "memory.expired" if expired else "memory.deleted" if r.deleted else "memory.put"
        return Event(
            id=event_id(kind, r.tenant, r),
            source=f"/memory/{store_id}",
            type=kind,
            subject=f"{r.namespace}/{r.key}"[:512],
            time=r.updated_at,
            tenant=r.tenant,
            data={
                "namespace": r.namespace,
                "key": r.key,
                "version": str(r.version),
                "store": store_id,
            },
        )

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


__all__ = ["AgentMemory", "MemoryService", "dumps"]


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
