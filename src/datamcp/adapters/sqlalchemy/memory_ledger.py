"""Sync runs, conflicts and schedule marks in the application database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from datamcp.adapters.sqlalchemy.memory_schema import to_record, to_row
from datamcp.adapters.sqlalchemy.tables import memory_conflicts, memory_schedules, memory_sync_runs
from datamcp.adapters.sqlalchemy.uow import _turn
from datamcp.core.memory.model import (
    Conflict,
    ConflictStatus,
    Record,
    RunStatus,
    Strategy,
    SyncMode,
    SyncRun,
)

_COUNTERS = (
    "records_read",
    "records_synced",
    "conflicts_detected",
    "conflicts_resolved",
    "conflicts_pending",
)
_ROW_ORDER = [
    "tenant",
    "namespace",
    "key",
    "value",
    "tags",
    "metadata",
    "created_at",
    "updated_at",
    "expires_at",
    "hlc",
    "origin",
    "vv",
    "deleted",
    "base",
    "leaves",
    "via",
    "seq",
]


def _run_row(run: SyncRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "tenant": run.tenant,
        "status": int(run.status),
        "strategy": int(run.strategy),
        "mode": int(run.mode),
        "stores": json.dumps(list(run.stores)),
        "dry_run": int(run.dry_run),
        "namespace_prefix": run.namespace_prefix,
        "trigger": run.trigger[:256],
        "owner": run.owner,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "counters": json.dumps({k: getattr(run, k) for k in _COUNTERS}),
        "error": run.error,
    }


def _run(row: Any) -> SyncRun:
    run = SyncRun(
        id=row.id,
        tenant=row.tenant,
        status=RunStatus(row.status),
        strategy=Strategy(row.strategy),
        mode=SyncMode(row.mode),
        stores=tuple(json.loads(row.stores)),
        dry_run=bool(row.dry_run),
        namespace_prefix=row.namespace_prefix,
        trigger=row.trigger,
        started_at=row.started_at,
        owner=row.owner,
        ended_at=row.ended_at,
        error=row.error,
    )
    for k, v in json.loads(row.counters).items():
        setattr(run, k, int(v))
    return run


def _versions(records: Sequence[Record]) -> str:
    return json.dumps([to_row(r) for r in records])


def _conflict(row: Any) -> Conflict:
    versions = [to_record([v[k] for k in _ROW_ORDER]) for v in json.loads(row.versions)]
    return Conflict(
        id=row.id,
        tenant=row.tenant,
        namespace=row.namespace,
        key=row.key,
        status=ConflictStatus(row.status),
        strategy=Strategy(row.strategy),
        sync_id=row.sync_id,
        versions=versions,
        winner=row.winner,
        detected_at=row.detected_at,
        resolved_at=row.resolved_at,
    )


class SqlSyncLedger:
    """:class:`~datamcp.core.memory.ports.SyncLedger` on the application engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        lock = _turn(self._engine)  # SQLite: take turns with the units of work
        if lock is not None:
            await lock.acquire()
        try:
            async with self._engine.begin() as conn:
                yield conn
        finally:
            if lock is not None:
                lock.release()

    async def add_run(self, run: SyncRun) -> None:
        async with self._tx() as conn:
            await conn.execute(insert(memory_sync_runs), [_run_row(run)])

    async def save_run(self, run: SyncRun) -> None:
        row = _run_row(run)
        async with self._tx() as conn:
            await conn.execute(
                update(memory_sync_runs).where(memory_sync_runs.c.id == run.id).values(**row)
            )

    async def get_run(self, tenant: str, run_id: str) -> SyncRun | None:
        t = memory_sync_runs
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(t).where(t.c.tenant == tenant, t.c.id == run_id))
            ).first()
        return _run(row) if row is not None else None

    async def list_runs(
        self, tenant: str, before: tuple[float, str] | None, limit: int
    ) -> list[SyncRun]:
        t = memory_sync_runs
        q = select(t).where(t.c.tenant == tenant)
        if before is not None:
            q = q.where(
                or_(
                    t.c.started_at < before[0],
                    and_(t.c.started_at == before[0], t.c.id < before[1]),
                )
            )
        q = q.order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_run(r) for r in rows]

    async def running_runs(self) -> list[SyncRun]:
        t = memory_sync_runs
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(t).where(t.c.status == int(RunStatus.RUNNING)))).all()
        return [_run(r) for r in rows]

    async def add_conflicts(self, conflicts: Sequence[Conflict]) -> int:
        if not conflicts:
            return 0
        t = memory_conflicts
        unique = {c.id: c for c in conflicts}
        async with self._tx() as conn:
            known = set(
                (await conn.execute(select(t.c.id).where(t.c.id.in_(list(unique))))).scalars()
            )
            rows = [
                {
                    "id": c.id,
                    "tenant": c.tenant,
                    "namespace": c.namespace,
                    "key": c.key,
                    "status": int(c.status),
                    "strategy": int(c.strategy),
                    "sync_id": c.sync_id,
                    "versions": _versions(c.versions),
                    "winner": c.winner[:128],
                    "detected_at": c.detected_at,
                    "resolved_at": c.resolved_at,
                }
                for c in unique.values()
                if c.id not in known
            ]
            if rows:
                await conn.execute(insert(t), rows)
        return len(rows)

    async def get_conflict(self, tenant: str, conflict_id: str) -> Conflict | None:
        t = memory_conflicts
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(t).where(t.c.tenant == tenant, t.c.id == conflict_id))
            ).first()
        return _conflict(row) if row is not None else None

    async def list_conflicts(
        self,
        tenant: str,
        status: ConflictStatus,
        prefix: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Conflict]:
        t = memory_conflicts
        q = select(t).where(t.c.tenant == tenant)
        if status != ConflictStatus.UNSPECIFIED:
            q = q.where(t.c.status == int(status))
        if prefix:
            q = q.where(
                or_(
                    t.c.namespace == prefix,
                    and_(t.c.namespace > prefix + "/", t.c.namespace < prefix + "0"),
                )
            )
        if before is not None:
            q = q.where(
                or_(
                    t.c.detected_at < before[0],
                    and_(t.c.detected_at == before[0], t.c.id < before[1]),
                )
            )
        q = q.order_by(t.c.detected_at.desc(), t.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_conflict(r) for r in rows]

    async def pending_for_key(self, tenant: str, namespace: str, key: str) -> list[Conflict]:
        t = memory_conflicts
        q = select(t).where(
            t.c.tenant == tenant,
            t.c.namespace == namespace,
            t.c.key == key,
            t.c.status == int(ConflictStatus.PENDING),
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_conflict(r) for r in rows]

    async def mark_resolved(self, tenant: str, ids: Sequence[str], winner: str, at: float) -> None:
        if not ids:
            return
        t = memory_conflicts
        async with self._tx() as conn:
            await conn.execute(
                update(t)
                .where(t.c.tenant == tenant, t.c.id.in_(list(ids)))
                .values(status=int(ConflictStatus.RESOLVED), winner=winner[:128], resolved_at=at)
            )

    async def claim_schedule(self, name: str, due: float) -> bool:
        t = memory_schedules
        async with self._tx() as conn:
            found = (
                await conn.execute(select(t.c.fired_for).where(t.c.name == name))
            ).scalar_one_or_none()
            if found is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            insert(t), [{"name": name, "fired_for": due, "fired_at": due}]
                        )
                except IntegrityError:  # another replica claimed it first
                    return False
                return True
            result = await conn.execute(
                update(t)
                .where(t.c.name == name, t.c.fired_for < due)
                .values(fired_for=due, fired_at=due)
            )
            return bool(result.rowcount)
