"""SQL side of tasks and agent-to-agent audit records.

The hot statements (insert, save, holders, adopt) are written once and run
through the unit of work's executor (``executor.py``: one driver trip each
on SQLite, where SQLAlchemy's per-row parameter processing was measured as
most of a commit's time). No dialect differences remain: ``FOR UPDATE`` (and
``SKIP LOCKED``) compiles to nothing on SQLite, which has one writer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from datamcp.adapters.sqlalchemy.executor import (
    Executor,
    executor_for,
    in_list,
    insert_ignoring,
    not_in_list,
)
from datamcp.adapters.sqlalchemy.tables import audit_records, tasks
from datamcp.core.agents.model import AuditRecord, Task, TaskError, TaskState
from datamcp.core.agents.ports import POOL_OWNER, PoolClaim

_FINAL = [int(s) for s in TaskState if s.final]
_COLUMNS = [c.name for c in tasks.c]


def _adopt_statement(by_id: bool) -> Any:
    """Take over the unfinished tasks of the owners (among the ids: by primary
    key, so a claim of known tasks reads no other row)."""
    where = and_(in_list(tasks.c.owner, "from_owners"), not_in_list(tasks.c.state, "final"))
    if by_id:
        where = and_(in_list(tasks.c.id, "ids"), where)
    return update(tasks).where(where).values(owner=bindparam("owner")).returning(*tasks.c)


_ADOPT = {by_id: _adopt_statement(by_id) for by_id in (True, False)}
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
    return {
        "id": task.id,
        "tenant": task.tenant,
        "capability": task.capability,
        "input": task.input_json if task.input_json is not None else _dump(task.input),
        "priority": task.priority,
        "deadline": task.deadline,
        "timeout": task.timeout,
        "request_id": task.request_id,
        "max_attempts": task.max_attempts,
        "correlation_id": task.correlation_id,
        "parent_task_id": task.parent_task_id,
        "depth": task.depth,
        "pinned": int(task.pinned),
        "created_at": task.created_at,
        "cancel_requested_at": task.updated_at if task.cancel_requested else None,
        **_mutable(task),
    }


def _changes(task: Task, holder: str) -> dict[str, Any]:
    """``_SAVE``'s parameters: the ``_MUTABLE`` columns of a task (a save
    writes only these, so the input is not encoded again)."""
    return {"task_id": task.id, "holder": holder, **_mutable(task)}


def _mutable(task: Task) -> dict[str, Any]:
    """The columns a save may change."""
    error = task.error
    return {
        "agent_id": task.agent_id,
        "state": int(task.state),
        "attempts": task.attempts,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "result": _result(task),
        "error_reason": error.reason if error else None,
        "error_message": error.message if error else None,
        "error_retryable": int(error.retryable) if error else None,
        "updated_at": task.updated_at,
        "started_at": task.started_at,
        "ended_at": task.ended_at,
    }


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


_INSERT = insert_ignoring(tasks, "id").values({name: bindparam(name) for name in _COLUMNS})
_SAVE = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.owner == bindparam("holder"),
        tasks.c.state < literal_column(str(int(TaskState.SUCCEEDED))),
    )
    .values({name: bindparam(name) for name in _MUTABLE})
)
_HOLDERS = (
    select(tasks.c.id, tasks.c.owner, tasks.c.state)
    .where(in_list(tasks.c.id, "ids"))
    .with_for_update()  # nothing on SQLite: one writer, nothing to lock
)


class SqlTaskRepository:
    def __init__(self, conn: AsyncConnection, executor: Executor | None = None) -> None:
        self._conn = conn
        self._x = executor if executor is not None else executor_for(conn)

    async def insert(self, batch: Sequence[tuple[Task, str]]) -> None:
        if not batch:
            return
        rows = []
        for task, owner in batch:
            row = _row(task)
            row["owner"] = owner
            rows.append(row)
        await self._x.many(_INSERT, rows)

    async def save(self, batch: Sequence[Task], owner: str) -> None:
        if not batch:
            return
        await self._x.many(_SAVE, [_changes(t, owner) for t in batch])

    async def holders(self, ids: Sequence[str]) -> dict[str, tuple[str, TaskState]]:
        if not ids:
            return {}
        rows = await self._x.rows(_HOLDERS, {"ids": ids})
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
        rows = await self._x.rows(
            _ADOPT[bool(ids)],
            {"owner": owner, "from_owners": from_owners, "ids": ids, "final": _FINAL},
        )
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
            .with_for_update(skip_locked=True)  # nothing on SQLite: one writer
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
