"""Synchronising one ordered pair of stores (``target <- source``) for a run.

A pull reads the source's change feed after the pair's checkpoint in large
keyset pages, compares each change with the target's record by version
vector, and writes what is newer or settles what is concurrent, one target
transaction per page (records, history and the checkpoint together). The
checkpoint is kept on both sides, as CouchDB does; a pull resumes from the
lower of the two, so losing either side only costs a re-read, never a change.
Re-applying a page changes nothing (versions are compared, not counted), so
a crash anywhere is repaired by the next sync.

The checkpoint key of a pair is :func:`checkpoint_key`; how far a store is
behind (``ListStores``' lag) is read from those checkpoints by
:func:`replication_lag`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datamcp.core.memory.model import (
    Conflict,
    ConflictStatus,
    NamespacePolicy,
    Record,
    Strategy,
    SyncMode,
    SyncRequest,
    SyncRun,
    in_prefix,
)
from datamcp.core.memory.ports import MemoryStore, SyncLedger
from datamcp.core.memory.resolve import Policy, Relation, conflict_id, relation, settle, winner_of
from datamcp.core.memory.service import MemoryService

PAGE = 5000
SAVE_EVERY = 1.0
MAX_CONFLICT_EVENTS = 100
#: How a ``sync.*`` event is sent: (tenant, type, subject, id part, data).
Emit = Callable[[str, str, str, str, dict[str, object]], None]


def checkpoint_key(tenant: str, prefix: str, source_id: str, target_id: str) -> str:
    """The key the pull ``target <- source`` of a tenant's records under
    ``prefix`` keeps its checkpoint (the source's last sequence read) under,
    on both stores."""
    return f"{tenant}|{prefix}|{source_id}->{target_id}"


async def replication_lag(
    tenant: str, store: MemoryStore, primary: MemoryStore, stores: Sequence[MemoryStore]
) -> int:
    """How many of the tenant's changes whole-tenant syncs have yet to carry:
    for a store other than the primary, the primary's changes after the
    primary's checkpoint of ``store <- primary``; for the primary, the most
    any other store has yet to pull from it (0 when it is alone)."""
    if store.id != primary.id:
        key = checkpoint_key(tenant, "", primary.id, store.id)
        return await primary.pending(tenant, await primary.checkpoint(key))
    peers = [s for s in stores if s.id != store.id]
    if not peers:
        return 0
    lags = [
        await store.pending(
            tenant, await store.checkpoint(checkpoint_key(tenant, "", store.id, p.id))
        )
        for p in peers
    ]
    return max(lags)


@dataclass(slots=True)
class LiveRun:
    """A run this process is executing: its counters move with each page."""

    run: SyncRun
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Conflicts counted so far (a pair is met once per direction).
    conflicts: set[str] = field(default_factory=set)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Replicator:
    """Pulls pairs of stores of a :class:`MemoryService` for the sync engine.

    Args:
        service: the stores, their clocks and change signals.
        ledger: where detected conflicts are recorded and runs saved.
        policies: per-namespace conflict settings (longest prefix wins).
        page: changes read per page.
        emit: sends a ``sync.*`` event.
    """

    def __init__(
        self,
        service: MemoryService,
        ledger: SyncLedger,
        *,
        policies: Sequence[NamespacePolicy],
        page: int,
        clock: Callable[[], float],
        emit: Emit,
        saved: Callable[[SyncRun], None] = lambda _run: None,
    ) -> None:
        self.service = service
        self.ledger = ledger
        self._policies = sorted(policies, key=lambda p: len(p.prefix), reverse=True)
        self._page = page
        self._now = clock
        self._emit = emit
        self._saved = saved
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def pull(
        self, live: LiveRun, req: SyncRequest, source: MemoryStore, target: MemoryStore
    ) -> None:
        """Bring ``target`` up to date with ``source`` for ``live``'s run."""
        run = live.run
        tenant = run.tenant
        replication = checkpoint_key(tenant, run.namespace_prefix, source.id, target.id)
        lock = self._locks.setdefault((tenant, source.id, target.id), asyncio.Lock())
        async with lock:  # two runs on one pair would only repeat each other's work
            cursor = 0
            if run.mode == SyncMode.INCREMENTAL:
                cursor = min(
                    await source.checkpoint(replication), await target.checkpoint(replication)
                )
            start, saved = cursor, time.monotonic()
            clock = self.service.clock(target.id)
            policies: dict[str, Policy] = {}
            while True:
                page, last = await source.changes(
                    tenant, cursor, self._page, run.namespace_prefix, skip_via=target.id
                )
                if last == cursor:
                    break
                run.records_read += len(page)
                if page:
                    clock.observe(max(r.hlc for r in page))
                for r in page:
                    if r.namespace not in policies:
                        policies[r.namespace] = self._policy(r.namespace, req, run.stores)
                await self._apply_page(
                    live,
                    req,
                    (source, target),
                    page,
                    policies=policies,
                    checkpoint=(replication, last),
                )
                cursor = last
                if time.monotonic() - saved > SAVE_EVERY:
                    saved = time.monotonic()
                    if not run.dry_run:
                        await source.set_checkpoint(replication, cursor)
                    await self.ledger.save_run(run)
                    self._saved(run)
                live.notify()
            if cursor != start and not run.dry_run:
                await source.set_checkpoint(replication, cursor)

    async def _apply_page(
        self,
        live: LiveRun,
        req: SyncRequest,
        pair: tuple[MemoryStore, MemoryStore],
        page: list[Record],
        *,
        policies: dict[str, Policy],
        checkpoint: tuple[str, int],
    ) -> None:
        run = live.run
        target = pair[1]
        recorded: set[str] = set()
        for attempt in range(3):
            async with target.transaction() as tx:
                local = await tx.get_many(run.tenant, [r.ident for r in page])
                writes, replaced, conflicts = self._decide(run, page, local, policies, pair)
                fresh = [c for c in conflicts if c.id not in recorded]
                if run.dry_run:
                    break
                if not fresh or attempt == 2:
                    if writes:
                        await tx.write(writes, replaced, self.service.history_depth)
                    await tx.set_checkpoint(*checkpoint)
                    await tx.commit()
                    break
            # Conflicts are recorded before the page that detected them commits,
            # so a crash in between re-detects them instead of losing them. The
            # ledger may live in the target's database: record outside the
            # transaction, then decide again (a writer may have moved on).
            await self.ledger.add_conflicts(fresh)
            recorded.update(c.id for c in fresh)
        if fresh and not run.dry_run:
            await self.ledger.add_conflicts(fresh)
        if writes and not run.dry_run:
            self.service.notify(target.id)
        run.records_synced += len(writes)
        # The same pair is met once per direction: count (and announce) it once.
        conflicts = [c for c in conflicts if c.id not in live.conflicts]
        live.conflicts.update(c.id for c in conflicts)
        run.conflicts_detected += len(conflicts)
        pending = [c for c in conflicts if c.status == ConflictStatus.PENDING]
        run.conflicts_pending += len(pending)
        run.conflicts_resolved += len(conflicts) - len(pending)
        for c in conflicts[:MAX_CONFLICT_EVENTS]:
            if run.dry_run:
                break
            subject = f"{c.namespace}/{c.key}"[:512]
            self._emit(
                run.tenant,
                "sync.conflict.detected",
                subject,
                f"detected:{c.id}",
                {
                    "sync_id": run.id,
                    "conflict_id": c.id,
                    "namespace": c.namespace,
                    "key": c.key,
                    "versions": [str(v.version) for v in c.versions],
                },
            )
            if c.status == ConflictStatus.RESOLVED:
                self._emit(
                    run.tenant,
                    "sync.conflict.resolved",
                    subject,
                    f"resolved:{c.id}",
                    {
                        "sync_id": run.id,
                        "conflict_id": c.id,
                        "namespace": c.namespace,
                        "key": c.key,
                        "winner": c.winner,
                        "strategy": c.strategy.name.lower(),
                    },
                )

    def _decide(
        self,
        run: SyncRun,
        page: list[Record],
        local: dict[tuple[str, str], Record],
        policies: dict[str, Policy],
        pair: tuple[MemoryStore, MemoryStore],
    ) -> tuple[list[Record], list[Record], list[Conflict]]:
        source, target = pair[0].id, pair[1].id
        writes: list[Record] = []
        replaced: list[Record] = []
        conflicts: list[Conflict] = []
        now = self._now()
        for incoming in page:
            mine = local.get(incoming.ident)
            if mine is None:
                incoming.via = source  # page records are this sync's own copies
                writes.append(incoming)
                continue
            rel = relation(mine, incoming)
            if rel == Relation.SAME_OR_OLDER:
                continue
            if rel == Relation.NEWER:
                incoming.via = source
                writes.append(incoming)
                replaced.append(mine)
                continue
            policy = policies[incoming.namespace]
            settled = settle(mine, incoming, policy)
            versions = [mine, incoming]
            conflict = Conflict(
                id=conflict_id(run.tenant, incoming.namespace, incoming.key, versions),
                tenant=run.tenant,
                namespace=incoming.namespace,
                key=incoming.key,
                status=ConflictStatus.PENDING if settled is None else ConflictStatus.RESOLVED,
                strategy=policy.strategy,
                sync_id=run.id,
                versions=versions,
                winner="" if settled is None else winner_of(settled, versions),
                detected_at=now,
                resolved_at=None if settled is None else now,
            )
            conflicts.append(conflict)
            if settled is not None:
                settled.via = target
                writes.append(settled)
                replaced.append(mine)
        return writes, replaced, conflicts

    def _policy(self, namespace: str, req: SyncRequest, stores: Sequence[str]) -> Policy:
        found = next((p for p in self._policies if in_prefix(namespace, p.prefix)), None)
        strategy = req.strategy or (found.strategy if found else Strategy.TIMESTAMP_WINS)
        tie = req.tie_break or (found.tie_break if found else Strategy.TIMESTAMP_WINS)
        # The configured store order, not the run's: every run must rank alike.
        configured = tuple(s.id for s in self.service.stores)
        priority = req.priority or (found.priority if found and found.priority else configured)
        return Policy(strategy, tie, tuple(priority))


__all__ = ["LiveRun", "Replicator", "checkpoint_key", "replication_lag"]
