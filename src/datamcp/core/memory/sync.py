"""Synchronisation across stores: persisted runs, checkpoints, conflicts.

A sync pulls every ordered pair of the chosen stores (``target <- source``):
it reads the source's change feed after the pair's checkpoint in large
keyset pages, compares each change with the target's record by version
vector, and writes what is newer or settles what is concurrent, one target
transaction per page (records, history and the checkpoint together). The
checkpoint is kept on both sides, as CouchDB does; a sync resumes from the
lower of the two, so losing either side only costs a re-read, never a change.
Re-applying a page changes nothing (versions are compared, not counted), so
a crash anywhere is repaired by the next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from datamcp.core.background import wait_at_most
from datamcp.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    clip,
)
from datamcp.core.events.model import Event
from datamcp.core.instance_model import Instance
from datamcp.core.instances import is_gone
from datamcp.core.memory.clock import dominates, join
from datamcp.core.memory.model import (
    Conflict,
    ConflictStatus,
    NamespacePolicy,
    Record,
    RunStatus,
    Strategy,
    SyncMode,
    SyncRequest,
    SyncRun,
    check_namespace,
    in_prefix,
)
from datamcp.core.memory.ports import MemoryStore, SyncLedger
from datamcp.core.memory.resolve import Policy, Relation, relation, settle
from datamcp.core.memory.service import MemoryService, Publish
from datamcp.core.paging import Fits, encode, fill, keyset, page_size

log = logging.getLogger(__name__)

PAGE = 5000
SAVE_EVERY = 1.0
MAX_CONFLICT_EVENTS = 100


@dataclass(slots=True)
class _Live:
    run: SyncRun
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    conflicts: set[str] = field(default_factory=set)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def conflict_id(tenant: str, namespace: str, key: str, versions: Sequence[Record]) -> str:
    parts = sorted(f"{r.version}:{sorted(r.vv.items())}" for r in versions)
    raw = "\n".join([tenant, namespace, key, *parts])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class SyncEngine:
    """Runs syncs between the stores of a :class:`MemoryService`.

    Args:
        service: the stores and their writers.
        ledger: where runs and conflicts are kept (application database).
        publish: where ``sync.*`` events go.
        policies: per-namespace conflict settings (longest prefix wins).
        instance: this process (runs it owns are marked with it).
    """

    def __init__(
        self,
        service: MemoryService,
        ledger: SyncLedger,
        *,
        publish: Publish | None = None,
        policies: Sequence[NamespacePolicy] = (),
        instance: Instance | None = None,
        instances: Callable[[str], Awaitable[Instance | None]] | None = None,
        page: int = PAGE,
        clock: Callable[[], float] = time.time,
        stale_after: float = 8.0,
    ) -> None:
        self.service = service
        self.ledger = ledger
        self._publish = publish
        self._policies = sorted(policies, key=lambda p: len(p.prefix), reverse=True)
        self._instance = instance
        self._lookup = instances
        self._page = page
        self._now = clock
        self._stale_after = stale_after
        self._live: dict[str, _Live] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    @property
    def running(self) -> int:
        return len(self._live)

    # --- runs ---------------------------------------------------------------------

    def _validate(self, req: SyncRequest) -> tuple[str, ...]:
        known = [s.id for s in self.service.stores]
        stores = req.stores or tuple(known)
        bad: list[FieldViolation] = []
        for i, store_id in enumerate(stores):
            if store_id not in known:
                raise NotFound(
                    f"no memory store {clip(store_id)!r} (known: {', '.join(known)})",
                    reason="STORE_NOT_FOUND",
                    metadata={"store": store_id, "field": f"stores[{i}]"},
                )
        if len(set(stores)) != len(stores):
            bad.append(FieldViolation("stores", "each store at most once"))
        if len(set(stores)) < 2:
            bad.append(
                FieldViolation("stores", f"at least two stores to sync (configured: {known})")
            )
        for i, store_id in enumerate(req.priority):
            if store_id not in known:
                bad.append(FieldViolation(f"priority[{i}]", f"unknown store {clip(store_id)!r}"))
        if req.mode not in (SyncMode.INCREMENTAL, SyncMode.FULL):
            bad.append(FieldViolation("mode", "incremental or full"))
        try:
            check_namespace(req.namespace_prefix, "namespace_prefix", prefix=True)
        except InvalidArgument as exc:
            bad.extend(exc.violations)
        if req.tie_break in (Strategy.MERGE,):
            bad.append(FieldViolation("tie_break", "timestamp_wins, source_priority or manual"))
        if bad:
            raise InvalidArgument("invalid sync request", bad, reason="INVALID_SYNC")
        return tuple(stores)

    async def synchronize(self, tenant: str, req: SyncRequest, *, wait: bool = True) -> SyncRun:
        """Start a run (persisted before it starts) and, with ``wait``, await its end.

        A ``sync_id`` already used returns that run (idempotent triggers).
        """
        stores = self._validate(req)
        if req.sync_id:
            existing = await self.find_run(tenant, req.sync_id)
            if existing is not None:
                return existing
        run = SyncRun(
            id=req.sync_id or uuid.uuid4().hex,
            tenant=tenant,
            status=RunStatus.RUNNING,
            strategy=req.strategy,
            mode=req.mode,
            stores=stores,
            dry_run=req.dry_run,
            namespace_prefix=req.namespace_prefix,
            trigger=req.trigger,
            started_at=self._now(),
            owner=self._instance.id if self._instance else "",
        )
        await self.ledger.add_run(run)
        live = _Live(run)
        self._live[run.id] = live
        self._emit(
            tenant,
            "sync.started",
            run.id,
            run.id,
            {
                "sync_id": run.id,
                "strategy": run.strategy.name.lower(),
                "stores": list(stores),
                "mode": run.mode.name.lower(),
                "dry_run": run.dry_run,
            },
        )
        live.task = asyncio.create_task(self._execute(live, req), name=f"sync:{run.id}")
        if wait:
            await asyncio.shield(live.task)
        return run

    async def _execute(self, live: _Live, req: SyncRequest) -> None:
        run = live.run
        try:
            stores = [self.service.store(s) for s in run.stores]
            for target in stores:
                for source in stores:
                    if source is not target:
                        await self._pull(live, req, source, target)
        except asyncio.CancelledError:
            run.status, run.error = RunStatus.INTERRUPTED, "the server stopped during the sync"
            raise
        except Exception as exc:
            log.warning("sync failed", extra={"sync_id": run.id}, exc_info=exc)
            run.status, run.error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
        else:
            run.status = RunStatus.SUCCEEDED
        finally:
            run.ended_at = self._now()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.ledger.save_run(run))
            self._finished(live)

    def _finished(self, live: _Live) -> None:
        run = live.run
        if run.status == RunStatus.SUCCEEDED:
            self._emit(
                run.tenant,
                "sync.completed",
                run.id,
                run.id,
                {
                    "sync_id": run.id,
                    "synced": run.records_synced,
                    "read": run.records_read,
                    "conflicts_detected": run.conflicts_detected,
                    "conflicts_resolved": run.conflicts_resolved,
                    "conflicts_pending": run.conflicts_pending,
                    "duration_ms": int(run.duration * 1000),
                    "dry_run": run.dry_run,
                },
            )
        else:
            self._emit(
                run.tenant,
                "sync.failed",
                run.id,
                run.id,
                {"sync_id": run.id, "reason": run.status.name, "message": run.error},
            )
        live.notify()
        self._live.pop(run.id, None)

    def _policy(self, namespace: str, req: SyncRequest, stores: Sequence[str]) -> Policy:
        found = next((p for p in self._policies if in_prefix(namespace, p.prefix)), None)
        strategy = req.strategy or (found.strategy if found else Strategy.TIMESTAMP_WINS)
        tie = req.tie_break or (found.tie_break if found else Strategy.TIMESTAMP_WINS)
        # The configured store order, not the run's: every run must rank alike.
        configured = tuple(s.id for s in self.service.stores)
        priority = req.priority or (found.priority if found and found.priority else configured)
        return Policy(strategy, tie, tuple(priority))

    async def _pull(
        self, live: _Live, req: SyncRequest, source: MemoryStore, target: MemoryStore
    ) -> None:
        run = live.run
        tenant = run.tenant
        replication = f"{tenant}|{run.namespace_prefix}|{source.id}->{target.id}"
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
                live.notify()
            if cursor != start and not run.dry_run:
                await source.set_checkpoint(replication, cursor)

    async def _apply_page(
        self,
        live: _Live,
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
                winner="" if settled is None else _winner(settled, versions),
                detected_at=now,
                resolved_at=None if settled is None else now,
            )
            conflicts.append(conflict)
            if settled is not None:
                settled.via = target
                writes.append(settled)
                replaced.append(mine)
        return writes, replaced, conflicts

    def _emit(
        self, tenant: str, kind: str, subject: str, ident: str, data: dict[str, object]
    ) -> None:
        if self._publish is None:
            return
        raw = f"{kind}:{ident}"
        event = Event(
            id=raw if len(raw) <= 128 else f"{kind}:{hashlib.sha256(raw.encode()).hexdigest()}",
            source="/memory/sync",
            type=kind,
            subject=subject,
            time=self._now(),
            tenant=tenant,
            data=data,
        )
        self.service.spawn(self._publish([event]), "sync events")

    # --- queries ------------------------------------------------------------------

    async def find_run(self, tenant: str, run_id: str) -> SyncRun | None:
        live = self._live.get(run_id)
        if live is not None and live.run.tenant == tenant:
            return live.run
        return await self.ledger.get_run(tenant, run_id) if run_id else None

    async def get_run(self, tenant: str, run_id: str) -> SyncRun:
        run = await self.find_run(tenant, run_id)
        if run is None:
            raise NotFound(
                f"no sync run {clip(run_id)!r}",
                reason="SYNC_RUN_NOT_FOUND",
                metadata={"sync_id": run_id},
            )
        return run

    async def list_runs(self, tenant: str, size: int, token: str) -> tuple[list[SyncRun], str]:
        limit = page_size(size)
        runs = await self.ledger.list_runs(tenant, keyset(token), limit + 1)
        runs = [self._live[r.id].run if r.id in self._live else r for r in runs]
        more = len(runs) > limit
        runs = runs[:limit]
        return runs, encode([runs[-1].started_at, runs[-1].id]) if more else ""

    async def watch(self, tenant: str, run_id: str) -> AsyncIterator[SyncRun]:
        """The run now, then after each page, ending with its final state."""
        # Finality is judged on the copy that was sent: the live run keeps
        # changing while this generator is suspended in its yield.
        while True:
            live = self._live.get(run_id)
            if live is None:
                run = await self.get_run(tenant, run_id)
                yield run
                if run.status.final:
                    return
                await asyncio.sleep(0.5)  # owned by another process: poll
                continue
            if live.run.tenant != tenant:
                raise NotFound(f"no sync run {clip(run_id)!r}", reason="SYNC_RUN_NOT_FOUND")
            changed = live.changed
            run = replace(live.run)
            yield run
            if run.status.final:
                return
            await wait_at_most(changed, 5.0)

    async def list_conflicts(
        self,
        tenant: str,
        status: ConflictStatus,
        prefix: str,
        size: int,
        token: str,
        *,
        fits: Fits | None = None,
    ) -> tuple[list[Conflict], str]:
        """A page of conflicts, cut where ``fits`` says (see ``paging.fill``)."""
        check_namespace(prefix, "namespace_prefix", prefix=True)
        limit = page_size(size)
        found = await self.ledger.list_conflicts(tenant, status, prefix, keyset(token), limit + 1)
        found, more = fill(found[:limit], len(found) > limit, fits)
        return found, encode([found[-1].detected_at, found[-1].id]) if more and found else ""

    async def resolve(
        self, tenant: str, conflict_id_: str, *, version: str = "", value_json: str | None = None
    ) -> tuple[Conflict, Record]:
        """Settle a pending conflict with one of its versions or a supplied value,
        written to the primary store as a version that includes every version of
        the key's pending conflicts (so the next sync spreads it everywhere)."""
        if bool(version) == (value_json is not None):
            raise InvalidArgument(
                "give exactly one of version and value",
                [FieldViolation("version", "set version or value, not both, not neither")],
            )
        conflict = await self.ledger.get_conflict(tenant, conflict_id_)
        if conflict is None:
            raise NotFound(
                f"no conflict {clip(conflict_id_)!r}",
                reason="CONFLICT_NOT_FOUND",
                metadata={"conflict_id": conflict_id_},
            )
        if conflict.status != ConflictStatus.PENDING:
            raise FailedPrecondition(
                f"conflict {conflict_id_} is already resolved (winner {conflict.winner})",
                reason="CONFLICT_RESOLVED",
                metadata={"conflict_id": conflict_id_},
            )
        delete = False
        if version:
            chosen = next((v for v in conflict.versions if str(v.version) == version), None)
            if chosen is None:
                choices = ", ".join(str(v.version) for v in conflict.versions)
                raise InvalidArgument(
                    f"{version} is not a version of conflict {conflict_id_}",
                    [FieldViolation("version", f"one of {choices}")],
                )
            value_json, delete = chosen.value_json, chosen.deleted
        pending = await self.ledger.pending_for_key(tenant, conflict.namespace, conflict.key)
        vv: dict[str, int] = {}
        for c in [conflict, *pending]:
            for v in c.versions:
                vv = join(vv, v.vv)
        value = None if value_json is None else json.loads(value_json)
        op = self.service.op(conflict.namespace, conflict.key, value, delete=delete)
        [record] = await self.service.write(tenant, [op], self.service.primary_id, join_vv=vv)
        settled = [
            c.id
            for c in [conflict, *pending]
            if all(dominates(record.vv, v.vv) for v in c.versions)
        ]
        winner = version or "manual"
        now = self._now()
        await self.ledger.mark_resolved(tenant, settled, winner, now)
        conflict.status, conflict.winner, conflict.resolved_at = (
            ConflictStatus.RESOLVED,
            winner,
            now,
        )
        for cid in settled:
            self._emit(
                tenant,
                "sync.conflict.resolved",
                f"{conflict.namespace}/{conflict.key}"[:512],
                f"resolved:{cid}",
                {
                    "sync_id": conflict.sync_id,
                    "conflict_id": cid,
                    "namespace": conflict.namespace,
                    "key": conflict.key,
                    "winner": winner,
                    "strategy": "manual",
                },
            )
        return conflict, record

    async def recover(self) -> int:
        """Mark runs left RUNNING by dead processes INTERRUPTED; returns how many."""
        if self._lookup is None:
            return 0
        count = 0
        now = self._now()
        for run in await self.ledger.running_runs():
            if run.id in self._live:
                continue
            owner = await self._lookup(run.owner) if run.owner else None
            if owner is None or is_gone(owner, now, self._stale_after):
                run.status = RunStatus.INTERRUPTED
                run.error = "the process running it died; the next sync resumes from checkpoints"
                run.ended_at = now
                await self.ledger.save_run(run)
                count += 1
        return count

    async def stop(self) -> None:
        for live in list(self._live.values()):
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(BaseException):
                    await live.task


def _winner(settled: Record, versions: Sequence[Record]) -> str:
    for v in versions:
        if v.version == settled.version and v.value_json == settled.value_json:
            return str(v.version)
    if settled.leaves and any(
        leaf["h"] == settled.hlc and leaf["o"] == settled.origin and leaf["v"] == settled.value_json
        for leaf in settled.leaves
    ):
        return str(settled.version)
    return "merged"


__all__ = ["SyncEngine", "conflict_id"]
