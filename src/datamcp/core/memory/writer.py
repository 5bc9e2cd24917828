"""The group-committing writer of one memory store.

Writes to a store go through one writer task per store that group-commits:
while a transaction is in flight, later writes queue and go into the next
one together, each checked against the state it would land on (expected
version, existence). A failed write fails only its own job; a BatchPut is one
job, so it is all or nothing. The writer mints each version on the store's
hybrid clock and builds its ``memory.*`` event; what becomes of the events
(committed in the write's transaction, or published after it) is the
service's to decide (see ``service.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import Conflict, DataMCPError, NotFound, Unavailable
from datamcp.core.events.model import Event
from datamcp.core.memory.clock import HybridClock, join
from datamcp.core.memory.model import PutOp, Record
from datamcp.core.memory.ports import MemoryStore

log = logging.getLogger(__name__)

_Done = list[list[Record] | DataMCPError]
#: Most writes one group commit takes (and one call may ask for).
MAX_BATCH = 1000
#: What the service hears after each group commit: the store's id, the
#: records written, their events, and whether the events were committed with
#: them (an outbox on the application database).
Written = Callable[[str, list[Record], list[Event], bool], None]


@dataclass(slots=True)
class _Job:
    tenant: str
    ops: list[PutOp]
    future: asyncio.Future[list[Record]]
    join_vv: Mapping[str, int] | None = None


@dataclass(slots=True)
class StoreWriter:
    """The writer task of one store and the clock its versions are minted on.

    Args:
        store: the store written to.
        clock: the store's hybrid clock.
        now: the wall clock (created/updated/expiry times).
        history_depth: previous versions kept per key.
        outbox: store the events in the write's transaction when the store
            can (someone consumes them).
        written: told of each group commit (see :data:`Written`).
    """

    store: MemoryStore
    clock: HybridClock
    now: Callable[[], float]
    history_depth: int
    outbox: bool
    written: Written
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._loop(), name=f"memory-writer:{self.store.id}")

    async def stop(self) -> None:
        await cancel_and_wait(self.task)
        self.task = None

    async def write(
        self, tenant: str, ops: Sequence[PutOp], join_vv: Mapping[str, int] | None
    ) -> list[Record]:
        """Queue ``ops`` as one job (all or nothing) and await its commit."""
        if self.task is None:
            raise Unavailable("the memory service is not running", reason="MEMORY_STOPPED")
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Job(tenant, list(ops), future, join_vv))
        return await asyncio.shield(future)

    async def _loop(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            count = len(jobs[0].ops)
            while count < MAX_BATCH and not self.queue.empty():
                job = self.queue.get_nowait()
                jobs.append(job)
                count += len(job.ops)
            try:
                await self._settle(jobs)
            finally:
                for _ in jobs:
                    self.queue.task_done()

    async def _settle(self, jobs: list[_Job]) -> None:
        """Commit ``jobs`` and answer each. A commit that fails for anything
        but an outage is retried in halves until the offending job fails
        alone: one caller's write never fails another's (the event bus does
        the same)."""
        try:
            done, events, durable = await self._commit(jobs)
        except Unavailable as exc:
            log.warning("memory store write failed", exc_info=exc)
            _fail(jobs, exc)
            return
        except Exception as exc:
            if len(jobs) > 1:
                middle = len(jobs) // 2
                await self._settle(jobs[:middle])
                await self._settle(jobs[middle:])
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
        self.written(self.store.id, written, events, durable)

    async def _commit(self, jobs: list[_Job]) -> tuple[_Done, list[Event], bool]:
        results: _Done = []
        events: list[Event] = []
        durable = False
        now = self.now()
        async with self.store.transaction() as tx:
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
                            job.tenant, op, cur, now=now, join_vv=job.join_vv
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
                    record_event(self.store.id, r, expired=o.expire)
                    for o, r in zip(job.ops, done, strict=True)
                )
            if writes:
                await tx.write(list(writes.values()), replaced, self.history_depth)
                if self.outbox:
                    durable = await tx.add_events(events)
                await tx.commit()
        return results, events, durable

    def _apply(
        self,
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
        hlc = self.clock.now(after)
        vv[self.store.id] = hlc
        return Record(
            tenant=tenant,
            namespace=op.namespace,
            key=op.key,
            value_json=op.value_json,
            hlc=hlc,
            origin=self.store.id,
            vv=vv,
            tags=op.tags if op.value_json is not None else (),
            metadata=dict(op.metadata) if op.value_json is not None else {},
            created_at=cur.created_at if cur is not None and live else now,
            updated_at=now,
            expires_at=now + op.ttl if op.ttl else None,
            deleted=op.value_json is None,
            base_json=cur.value_json if cur is not None and not cur.deleted else None,
        )


def event_id(kind: str, tenant: str, record: Record) -> str:
    raw = f"{kind}:{tenant}/{record.namespace}/{record.key}@{record.version}"
    return raw if len(raw) <= 128 else f"{kind}:{hashlib.sha256(raw.encode()).hexdigest()}"


def record_event(store_id: str, r: Record, *, expired: bool = False) -> Event:
    """The ``memory.*`` event of a version written on ``store_id``."""
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


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


__all__ = ["MAX_BATCH", "StoreWriter", "Written", "event_id", "record_event"]
