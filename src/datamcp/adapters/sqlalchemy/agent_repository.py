"""SQL side of tasks and agent-to-agent audit records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from datamcp.adapters.sqlalchemy.sqlite_driver import (
    Prepared,
    SqliteDriver,
    in_json_list,
    json_list,
)
from datamcp.adapters.sqlalchemy.tables import audit_records, tasks
from datamcp.core.agents.model import AuditRecord, Task, TaskError, TaskState
from datamcp.core.agents.ports import POOL_OWNER, PoolClaim

_FINAL = [int(s) for s in TaskState if s.final]
_FINAL_JSON = json_list(_FINAL)
_COLUMNS = [c.name for c in tasks.c]


def _adopt_statement(by_id: bool) -> Prepared:
    """SQLite: take over the unfinished tasks of the owners (among the ids)."""
    where = and_(
        tasks.c.owner.in_(in_json_list("from_owners")),
        tasks.c.state.not_in(in_json_list("final")),
    )
    if by_id:
        where = and_(tasks.c.id.in_(in_json_list("ids")), where)
    return Prepared(update(tasks).where(where).values(owner=bindparam("owner")).returning(*tasks.c))


_LITE_ADOPT = {by_id: _adopt_statement(by_id) for by_id in (True, False)}
_MUTABLE = (
    "agent_id",
    "state",
    "attempts",
    "progress",
    "progress_message",
    "result",
    "error_reason",
    "error_message",
    "error_retryable",
    "updated_at",
    "started_at",
    "ended_at",
)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _result(task: Task) -> str | None:
    if task.result is None:
        return None
    return task.result_json if task.result_json is not None else _dump(task.result)


def _row(task: Task) -> dict[str, Any]:
    error = task.error
    return {
        "id": task.id,
        "tenant": task.tenant,
        "capability": task.capability,
        "agent_id": task.agent_id,
        "input": task.input_json if task.input_json is not None else _dump(task.input),
        "priority": task.priority,
        "deadline": task.deadline,
        "timeout": task.timeout,
        "request_id": task.request_id,
        "state": int(task.state),
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "correlation_id": task.correlation_id,
        "parent_task_id": task.parent_task_id,
        "depth": task.depth,
        "pinned": int(task.pinned),
        "progress": task.progress,
        "progress_message": task.progress_message,
        "result": _result(task),
        "error_reason": error.reason if error else None,
        "error_message": error.message if error else None,
        "error_retryable": int(error.retryable) if error else None,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "started_at": task.started_at,
        "ended_at": task.ended_at,
        "cancel_requested_at": task.updated_at if task.cancel_requested else None,
    }


def _changes(task: Task) -> tuple[Any, ...]:
    """The ``_MUTABLE`` columns of a task, in that order (a save writes only
    these, so the input is not encoded again)."""
    error = task.error
    return (
        task.agent_id,
        int(task.state),
        task.attempts,
        task.progress,
        task.progress_message,
        _result(task),
        error.reason if error else None,
        error.message if error else None,
        int(error.retryable) if error else None,
        task.updated_at,
        task.started_at,
        task.ended_at,
    )


def _task(row: Any) -> Task:
    error = None
    if row.error_reason is not None:
        error = TaskError(row.error_reason, row.error_message or "", bool(row.error_retryable))
    return Task(
        id=row.id,
        tenant=row.tenant,
        capability=row.capability,
        agent_id=row.agent_id,
        input=json.loads(row.input),
        priority=row.priority,
        deadline=row.deadline,
        timeout=row.timeout,
        request_id=row.request_id,
        state=TaskState(row.state),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        correlation_id=row.correlation_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        parent_task_id=row.parent_task_id,
        depth=row.depth,
        pinned=bool(row.pinned),
        progress=row.progress,
        progress_message=row.progress_message,
        result=None if row.result is None else json.loads(row.result),
        error=error,
        started_at=row.started_at,
        ended_at=row.ended_at,
        cancel_requested=row.cancel_requested_at is not None,
    )


# Driver-level statements for SQLite: inserts and saves are the hot path of
# every task, and SQLAlchemy's per-row parameter processing was measured as
# most of a commit's time there.
_SQLITE_INSERT = (
    f"INSERT OR IGNORE INTO tasks ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_SQLITE_SAVE = (
    f"UPDATE tasks SET {', '.join(f'{n} = ?' for n in _MUTABLE)} "
    f"WHERE id = ? AND owner = ? AND state < {int(TaskState.SUCCEEDED)}"
)
_SAVE = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.owner == bindparam("holder"),
        tasks.c.state < int(TaskState.SUCCEEDED),
    )
    .values({name: bindparam(name) for name in _MUTABLE})
)


class SqlTaskRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._lite = SqliteDriver(conn) if conn.dialect.name == "sqlite" else None

    async def insert(self, batch: Sequence[tuple[Task, str]]) -> None:
        if not batch:
            return
        rows = []
        for task, owner in batch:
            row = _row(task)
            row["owner"] = owner
            rows.append(row)
        if self._lite is not None:
            await self._lite.execute_many(
                _SQLITE_INSERT, [tuple(map(row.__getitem__, _COLUMNS)) for row in rows]
            )
            return
        stmt = postgresql.insert(tasks).on_conflict_do_nothing(index_elements=["id"])
        await self._conn.execute(stmt, rows)

    async def save(self, batch: Sequence[Task], owner: str) -> None:
        if not batch:
            return
        if self._lite is not None:
            await self._lite.execute_many(
                _SQLITE_SAVE, [(*_changes(t), t.id, owner) for t in batch]
            )
            return
        await self._conn.execute(
            _SAVE,
            [
                {"task_id": t.id, "holder": owner, **dict(zip(_MUTABLE, _changes(t), strict=True))}
                for t in batch
            ],
        )

    async def holders(self, ids: Sequence[str]) -> dict[str, tuple[str, TaskState]]:
        if not ids:
            return {}
        query = select(tasks.c.id, tasks.c.owner, tasks.c.state).where(tasks.c.id.in_(list(ids)))
        if self._lite is None:  # SQLite has one writer: nothing to lock
            query = query.with_for_update()
        rows = await self._conn.execute(query)
        return {row.id: (row.owner, TaskState(row.state)) for row in rows}

    async def request_cancel(self, tenant: str, task_id: str, at: float) -> Task | None:
        row = (
            await self._conn.execute(
                update(tasks)
                .where(
                    tasks.c.id == task_id,
                    tasks.c.tenant == tenant,
                    tasks.c.state < int(TaskState.SUCCEEDED),
                )
                .values(cancel_requested_at=func.coalesce(tasks.c.cancel_requested_at, at))
                .returning(*tasks.c)
            )
        ).one_or_none()
        return None if row is None else _task(row)

    async def cancel_requests(self, owner: str) -> list[str]:
        rows = await self._conn.execute(
            select(tasks.c.id).where(
                tasks.c.owner == owner,
                tasks.c.state < int(TaskState.SUCCEEDED),
                tasks.c.cancel_requested_at.is_not(None),
            )
        )
        return [row.id for row in rows]

    async def get(self, tenant: str, task_id: str) -> Task | None:
        row = (
            await self._conn.execute(
                select(tasks).where(tasks.c.id == task_id, tasks.c.tenant == tenant)
            )
        ).one_or_none()
        return None if row is None else _task(row)

    async def page(
        self,
        tenant: str,
        *,
        states: Sequence[TaskState],
        capability: str,
        correlation_id: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Task]:
        query = select(tasks).where(tasks.c.tenant == tenant)
        if states:
            query = query.where(tasks.c.state.in_([int(s) for s in states]))
        if capability:
            query = query.where(tasks.c.capability == capability)
        if correlation_id:
            query = query.where(tasks.c.correlation_id == correlation_id)
        if before is not None:
            at, last_id = before
            query = query.where(
                or_(tasks.c.created_at < at, and_(tasks.c.created_at == at, tasks.c.id < last_id))
            )
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
        return [_task(row) for row in await self._conn.execute(query)]

    async def owners_of_unfinished(self) -> list[str]:
        rows = await self._conn.execute(
            select(tasks.c.owner).where(tasks.c.state.not_in(_FINAL)).distinct()
        )
        return [row.owner for row in rows]

    async def adopt(
        self, owner: str, from_owners: Sequence[str], ids: Sequence[str] = ()
    ) -> list[Task]:
        rows: Sequence[Any]
        if self._lite is not None:
            # By primary key when ids are given: a claim of known tasks reads
            # no other row.
            rows = await self._lite.rows(
                _LITE_ADOPT[bool(ids)],
                {
                    "owner": owner,
                    "from_owners": json_list(from_owners),
                    "ids": json_list(ids),
                    "final": _FINAL_JSON,
                },
            )
            return sorted((_task(r) for r in rows), key=lambda t: (-t.priority, t.created_at))
        where = and_(tasks.c.owner.in_(list(from_owners)), tasks.c.state.not_in(_FINAL))
        if ids:  # by primary key: a claim of known tasks reads no other row
            where = and_(tasks.c.id.in_(list(ids)), where)
        rows = (
            await self._conn.execute(
                update(tasks).where(where).values(owner=owner).returning(*tasks.c)
            )
        ).all()
        return sorted((_task(r) for r in rows), key=lambda t: (-t.priority, t.created_at))

    async def claim_pooled(self, owner: str, want: PoolClaim, now: float) -> list[Task]:
        t = tasks
        targets = [and_(t.c.pinned == 1, t.c.agent_id == want.agent_id)]
        if want.capabilities:
            targets.append(and_(t.c.pinned == 0, t.c.capability.in_(want.capabilities)))
        pick = select(t.c.id).where(
            t.c.owner == POOL_OWNER,
            t.c.state == int(TaskState.QUEUED),
            t.c.deadline > now,
            or_(*targets),
        )
        if want.tenants is not None:
            pick = pick.where(t.c.tenant.in_(sorted(want.tenants)))
        if want.excluded:
            pick = pick.where(t.c.tenant.not_in(sorted(want.excluded)))
        return await self._take(owner, pick, want.limit)

    async def claim_expired(self, owner: str, now: float, limit: int) -> list[Task]:
        pick = select(tasks.c.id).where(
            tasks.c.owner == POOL_OWNER,
            tasks.c.state == int(TaskState.QUEUED),
            tasks.c.deadline <= now,
        )
        return await self._take(owner, pick, limit)

    async def _take(self, owner: str, pick: Any, limit: int) -> list[Task]:
        """The best ``limit`` rows of ``pick`` become ``owner``'s; rows locked
        by another claimer are skipped (a CTE, so the LIMIT holds)."""
        ids = (
            pick.order_by(tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)
            .limit(limit)
            .with_for_update(skip_locked=self._lite is None)
            .cte("picked")
        )
        rows = (
            await self._conn.execute(
                update(tasks)
                .where(tasks.c.id.in_(select(ids.c.id)), tasks.c.owner == POOL_OWNER)
                .values(owner=owner)
                .returning(*tasks.c)
            )
        ).all()
        return sorted((_task(r) for r in rows), key=lambda t: (-t.priority, t.created_at))

    async def pooled_targets(self) -> list[tuple[bool, str]]:
        t = tasks
        rows = await self._conn.execute(
            select(t.c.pinned, t.c.agent_id, t.c.capability)
            .where(t.c.owner == POOL_OWNER, t.c.state == int(TaskState.QUEUED))
            .distinct()
        )
        return [(True, row.agent_id) if row.pinned else (False, row.capability) for row in rows]


class SqlAuditRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, records: Sequence[AuditRecord]) -> None:
        if records:
            await self._conn.execute(audit_records.insert(), [_audit_row(r) for r in records])

    async def page(
        self,
        tenant: str,
        *,
        correlation_id: str,
        agent_id: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[AuditRecord]:
        t = audit_records
        query = select(t).where(t.c.tenant == tenant)
        if correlation_id:
            query = query.where(t.c.correlation_id == correlation_id)
        if agent_id:
            query = query.where(
                or_(t.c.source_agent_id == agent_id, t.c.target_agent_id == agent_id)
            )
        if before is not None:
            at, last_id = before
            query = query.where(
                or_(t.c.started_at < at, and_(t.c.started_at == at, t.c.id < last_id))
            )
        query = query.order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
        return [AuditRecord(**row._mapping) for row in await self._conn.execute(query)]


def _audit_row(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in AuditRecord.__dataclass_fields__}
