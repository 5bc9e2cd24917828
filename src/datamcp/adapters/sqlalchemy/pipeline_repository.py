"""SQL side of pipelines, runs, rejected rows, cursors and schedule slots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

import datamcp.adapters.pipelines  # noqa: F401 - registers the source and destination kinds
from datamcp.adapters.sqlalchemy.executor import insert_ignoring
from datamcp.adapters.sqlalchemy.tables import pipeline_rejects, pipeline_runs, pipelines
from datamcp.core.pipelines.model import (
    Pipeline,
    Reject,
    Run,
    RunError,
    RunState,
    StageCounters,
)
from datamcp.core.pipelines.spec import parse_spec

_FINAL = [int(s) for s in RunState if s.final]
_ACTIVE = [int(s) for s in RunState if not s.final]


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _pipeline_row(p: Pipeline) -> dict[str, Any]:
    return {
        "id": p.id,
        "tenant": p.tenant,
        "name": p.name,
        "description": p.description,
        "spec": _dump(p.spec.to_dict()),
        "version": p.version,
        "cursor": None if p.cursor is None else _dump(p.cursor),
        "next_fire_at": p.next_fire_at,
        "has_triggers": int(bool(p.spec.triggers)),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def _pipeline(row: Any) -> Pipeline:
    return Pipeline(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        description=row.description,
        spec=parse_spec(json.loads(row.spec)),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        cursor=_load(row.cursor),
        next_fire_at=row.next_fire_at,
    )


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "tenant": run.tenant,
        "pipeline_id": run.pipeline_id,
        "pipeline_name": run.pipeline_name,
        "pipeline_version": run.pipeline_version,
        "state": int(run.state),
        "trigger": run.trigger,
        "params": _dump(run.params),
        "request_id": run.request_id,
        "correlation_id": run.correlation_id,
        "stages": _dump([s.to_dict() for s in run.stages]),
        "rows_read": run.rows_read,
        "rows_written": run.rows_written,
        "rows_rejected": run.rows_rejected,
        "error_reason": run.error.reason if run.error else None,
        "error_message": run.error.message if run.error else None,
        "cursor_start": None if run.cursor_start is None else _dump(run.cursor_start),
        "cursor_end": None if run.cursor_end is None else _dump(run.cursor_end),
        "attempts": run.attempts,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "owner": run.owner,
        "cancel_requested": int(run.cancel_requested),
        "active_key": None if run.state.final else run.pipeline_id,
    }


_MUTABLE = (
    "state",
    "stages",
    "rows_read",
    "rows_written",
    "rows_rejected",
    "error_reason",
    "error_message",
    "cursor_end",
    "attempts",
    "updated_at",
    "started_at",
    "ended_at",
    "owner",
    "active_key",
)


#: No index named: any unique violation (the id, or a second unfinished run
#: of the pipeline) leaves the row out.
_INSERT_RUN = insert_ignoring(pipeline_runs)


def _run(row: Any) -> Run:
    error = None
    if row.error_reason is not None:
        error = RunError(row.error_reason, row.error_message or "")
    return Run(
        id=row.id,
        tenant=row.tenant,
        pipeline_id=row.pipeline_id,
        pipeline_name=row.pipeline_name,
        pipeline_version=row.pipeline_version,
        state=RunState(row.state),
        trigger=row.trigger,
        params=json.loads(row.params),
        request_id=row.request_id,
        correlation_id=row.correlation_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        stages=[StageCounters(**s) for s in json.loads(row.stages)],
        rows_read=row.rows_read,
        rows_written=row.rows_written,
        rows_rejected=row.rows_rejected,
        error=error,
        cursor_start=_load(row.cursor_start),
        cursor_end=_load(row.cursor_end),
        attempts=row.attempts,
        started_at=row.started_at,
        ended_at=row.ended_at,
        owner=row.owner,
        cancel_requested=bool(row.cancel_requested),
    )


class SqlPipelineRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # ---- pipelines -------------------------------------------------------------------

    async def add_pipeline(self, pipeline: Pipeline) -> bool:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(insert(pipelines), [_pipeline_row(pipeline)])
        except IntegrityError:
            return False
        return True

    async def get_pipeline(self, tenant: str, id_or_name: str) -> Pipeline | None:
        t = pipelines
        row = (
            await self._conn.execute(
                select(t).where(
                    t.c.tenant == tenant, or_(t.c.id == id_or_name, t.c.name == id_or_name)
                )
            )
        ).first()
        return None if row is None else _pipeline(row)

    async def update_pipeline(self, pipeline: Pipeline, expected_version: int) -> bool:
        row = _pipeline_row(pipeline)
        result = await self._conn.execute(
            update(pipelines)
            .where(
                pipelines.c.id == pipeline.id,
                pipelines.c.tenant == pipeline.tenant,
                pipelines.c.version == expected_version,
            )
            .values(
                {
                    k: row[k]
                    for k in (
                        "description",
                        "spec",
                        "version",
                        "next_fire_at",
                        "has_triggers",
                        "updated_at",
                    )
                }
            )
        )
        return bool(result.rowcount)

    async def delete_pipeline(self, tenant: str, pipeline_id: str) -> bool:
        run_ids = select(pipeline_runs.c.id).where(pipeline_runs.c.pipeline_id == pipeline_id)
        await self._conn.execute(
            delete(pipeline_rejects).where(pipeline_rejects.c.run_id.in_(run_ids))
        )
        await self._conn.execute(
            delete(pipeline_runs).where(
                pipeline_runs.c.pipeline_id == pipeline_id, pipeline_runs.c.tenant == tenant
            )
        )
        result = await self._conn.execute(
            delete(pipelines).where(pipelines.c.id == pipeline_id, pipelines.c.tenant == tenant)
        )
        return bool(result.rowcount)

    async def page_pipelines(self, tenant: str, after: str, limit: int) -> list[Pipeline]:
        t = pipelines
        query = select(t).where(t.c.tenant == tenant)
        if after:
            query = query.where(t.c.name > after)
        rows = await self._conn.execute(query.order_by(t.c.name).limit(limit))
        return [_pipeline(r) for r in rows]

    async def set_cursor(self, pipeline_id: str, cursor: Any) -> None:
        await self._conn.execute(
            update(pipelines).where(pipelines.c.id == pipeline_id).values(cursor=_dump(cursor))
        )

    async def due_pipelines(self, now: float, limit: int) -> list[Pipeline]:
        t = pipelines
        rows = await self._conn.execute(
            select(t)
            .where(t.c.next_fire_at.is_not(None), t.c.next_fire_at <= now)
            .order_by(t.c.next_fire_at)
            .limit(limit)
        )
        return [_pipeline(r) for r in rows]

    async def claim_slot(self, pipeline_id: str, due: float, following: float) -> bool:
        result = await self._conn.execute(
            update(pipelines)
            .where(pipelines.c.id == pipeline_id, pipelines.c.next_fire_at == due)
            .values(next_fire_at=following or None)
        )
        return bool(result.rowcount)

    async def triggered_pipelines(self) -> list[Pipeline]:
        rows = await self._conn.execute(select(pipelines).where(pipelines.c.has_triggers == 1))
        return [_pipeline(r) for r in rows]

    # ---- runs --------------------------------------------------------------------------

    async def insert_runs(self, runs: Sequence[Run]) -> None:
        if not runs:
            return
        for run in runs:
            await self._conn.execute(_INSERT_RUN, [_run_row(run)])

    async def save_runs(self, runs: Sequence[Run]) -> None:
        for run in runs:
            row = _run_row(run)
            await self._conn.execute(
                update(pipeline_runs)
                .where(pipeline_runs.c.id == run.id)
                .values({k: row[k] for k in _MUTABLE})
            )

    async def get_run(self, tenant: str, run_id: str) -> Run | None:
        row = (
            await self._conn.execute(
                select(pipeline_runs).where(
                    pipeline_runs.c.id == run_id, pipeline_runs.c.tenant == tenant
                )
            )
        ).first()
        return None if row is None else _run(row)

    async def page_runs(
        self,
        tenant: str,
        *,
        pipeline_id: str,
        states: Sequence[RunState],
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Run]:
        t = pipeline_runs
        query = select(t).where(t.c.tenant == tenant)
        if pipeline_id:
            query = query.where(t.c.pipeline_id == pipeline_id)
        if states:
            query = query.where(t.c.state.in_([int(s) for s in states]))
        if before is not None:
            at, last = before
            query = query.where(or_(t.c.created_at < at, and_(t.c.created_at == at, t.c.id < last)))
        query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        return [_run(r) for r in await self._conn.execute(query)]

    async def active_runs(self, tenant: str, pipeline_id: str) -> int:
        t = pipeline_runs
        count = await self._conn.scalar(
            select(func.count())
            .select_from(t)
            .where(t.c.tenant == tenant, t.c.pipeline_id == pipeline_id, t.c.state.in_(_ACTIVE))
        )
        return int(count or 0)

    async def request_cancel(self, tenant: str, run_id: str) -> bool:
        t = pipeline_runs
        result = await self._conn.execute(
            update(t)
            .where(t.c.id == run_id, t.c.tenant == tenant, t.c.state.in_(_ACTIVE))
            .values(cancel_requested=1)
        )
        return bool(result.rowcount)

    async def cancel_requested(self, run_id: str) -> bool:
        value = await self._conn.scalar(
            select(pipeline_runs.c.cancel_requested).where(pipeline_runs.c.id == run_id)
        )
        return bool(value)

    async def unfinished_owners(self) -> list[str]:
        rows = await self._conn.execute(
            select(pipeline_runs.c.owner).where(pipeline_runs.c.state.in_(_ACTIVE)).distinct()
        )
        return [r.owner for r in rows]

    async def runs_of_owners(self, owners: Sequence[str]) -> list[Run]:
        rows = await self._conn.execute(
            select(pipeline_runs).where(
                pipeline_runs.c.owner.in_(list(owners)), pipeline_runs.c.state.in_(_ACTIVE)
            )
        )
        return [_run(r) for r in rows]

    # ---- rejects -----------------------------------------------------------------------

    async def add_rejects(self, run_id: str, tenant: str, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        await self._conn.execute(
            insert(pipeline_rejects),
            [
                {
                    "run_id": run_id,
                    "tenant": tenant,
                    "stage": r.stage[:256],
                    "reason": r.reason,
                    "row": _dump(r.row),
                    "row_number": r.row_number,
                }
                for r in rejects
            ],
        )

    async def clear_rejects(self, run_id: str) -> None:
        await self._conn.execute(
            delete(pipeline_rejects).where(pipeline_rejects.c.run_id == run_id)
        )

    async def rejects(self, tenant: str, run_id: str, limit: int) -> list[Reject]:
        t = pipeline_rejects
        rows = await self._conn.execute(
            select(t)
            .where(t.c.run_id == run_id, t.c.tenant == tenant)
            .order_by(t.c.seq)
            .limit(limit)
        )
        return [Reject(r.stage, r.reason, json.loads(r.row), r.row_number) for r in rows]
