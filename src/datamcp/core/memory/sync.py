"""Synchronisation across stores: persisted runs, their events, conflicts.

A sync pulls every ordered pair of the chosen stores (``target <- source``,
see ``replicate.py`` for a pull, its checkpoints and how conflicts are
detected and settled). A run is stored before it starts and saved as it
goes; runs of a process that died are marked interrupted, and the next sync
resumes from the checkpoints. Pending conflicts are listed and resolved by
hand here.
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
from dataclasses import replace

from datamcp.core.background import wait_at_most
from datamcp.core.errors import (
    DataMCPError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    clip,
    error_id,
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
)
from datamcp.core.memory.ports import SyncLedger
from datamcp.core.memory.replicate import PAGE, LiveRun, Replicator
from datamcp.core.memory.service import MemoryService, Publish
from datamcp.core.paging import Fits, encode, fill, keyset, page_size
from datamcp.core.signals import KeyedWaiters, LocalSignals, Signals

log = logging.getLogger(__name__)


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
        signals: Signals | None = None,
    ) -> None:
        self.service = service
        self.ledger = ledger
        self._publish = publish
        self._instance = instance
        self._lookup = instances
        self._now = clock
        self._stale_after = stale_after
        self._live: dict[str, LiveRun] = {}
        self._signals = signals or LocalSignals()
        # Watchers of a run another replica executes: woken by its saves.
        self._changes = KeyedWaiters(self._signals, "syncs")
        self._pairs = Replicator(
            service,
            ledger,
            policies=policies,
            page=page,
            clock=clock,
            emit=self._emit,
            saved=self._saved,
        )

    @property
    def running(self) -> int:
        return len(self._live)

    def _saved(self, run: SyncRun) -> None:
        """Tell watchers on other replicas that ``run``'s stored state moved."""
        self._signals.send("syncs", run.id)

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
        self._saved(run)
        live = LiveRun(run)
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

    async def _execute(self, live: LiveRun, req: SyncRequest) -> None:
        run = live.run
        try:
            stores = [self.service.store(s) for s in run.stores]
            for target in stores:
                for source in stores:
                    if source is not target:
                        await self._pairs.pull(live, req, source, target)
        except asyncio.CancelledError:
            run.status, run.error = RunStatus.INTERRUPTED, "the server stopped during the sync"
            raise
        except DataMCPError as exc:  # a store down, a refused write: its own words
            log.warning("sync failed", extra={"sync_id": run.id}, exc_info=exc)
            run.status, run.error = RunStatus.FAILED, exc.message
        except Exception as exc:  # never the exception's class or text (internals)
            eid = error_id(exc)
            log.error("sync failed", extra={"sync_id": run.id, "error_id": eid}, exc_info=exc)
            run.status = RunStatus.FAILED
            run.error = f"the sync failed unexpectedly (error id {eid})"
        else:
            run.status = RunStatus.SUCCEEDED
        finally:
            run.ended_at = self._now()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.ledger.save_run(run))
                self._saved(run)
            self._finished(live)

    def _finished(self, live: LiveRun) -> None:
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
        # Listening before each read: a save signalled during it is not lost.
        with self._changes.listen(run_id) as elsewhere:
            while True:
                live = self._live.get(run_id)
                if live is None:  # executed by another replica (or finished)
                    run = await self.get_run(tenant, run_id)
                    yield run
                    if run.status.final:
                        return
                    await elsewhere.wait(self._changes.poll_interval(5.0, 0.5))
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
                self._saved(run)
                count += 1
        return count

    async def stop(self) -> None:
        for live in list(self._live.values()):
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(BaseException):
                    await live.task


__all__ = ["SyncEngine"]
