"""SQL side of stream jobs: job rows (spec, counters, watermark, lease),
checkpointed window state, and destination tables for window results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    insert,
    inspect,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from datamcp.adapters.sqlalchemy.executor import insert_ignoring
from datamcp.adapters.sqlalchemy.tables import (
    metadata,
    stream_jobs,
    stream_tables,
    stream_windows,
)
from datamcp.core.errors import FailedPrecondition
from datamcp.core.streams.model import Counters, StreamJob, StreamSpec
from datamcp.core.streams.ports import Checkpoint, Fenced, ResultRow
from datamcp.core.streams.windows import WindowState

_RESULT_COLUMNS = (
    "id",
    "tenant",
    "job_id",
    "key",
    "window_start",
    "window_end",
    "record_count",
    "aggregates",
    "emitted_at",
)


def result_table(name: str) -> Table:
    """The shape of a destination table (one row per closed window)."""
    return Table(
        name,
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False),
        Column("job_id", String(32), nullable=False),
        Column("key", Text, nullable=False),
        Column("window_start", Float, nullable=False),
        Column("window_end", Float, nullable=False),
        Column("record_count", BigInteger, nullable=False),
        Column("aggregates", Text, nullable=False),
        Column("emitted_at", Float, nullable=False),
    )


def _taken(table: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"table {table!r} is another tenant's stream destination; choose another name",
        reason="TABLE_IN_USE",
    )


def _job(row: Any) -> StreamJob:
    return StreamJob(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        spec=StreamSpec.from_json(row.spec),
        created_at=row.created_at,
        request_id=row.request_id,
        max_event_ms=row.max_event_ms,
        counters=Counters.from_json(row.counters),
        checkpoint_at=row.checkpoint_at,
        last_error=row.last_error,
    )


class SqlStreamRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def insert(self, job: StreamJob, owner: str, lease_until: float) -> bool:
        # A request_id taken by a concurrent create is a no-op, not an error.
        result = await self._conn.execute(
            insert_ignoring(stream_jobs).values(
                id=job.id,
                tenant=job.tenant,
                name=job.name,
                spec=job.spec.to_json(),
                request_id=job.request_id,
                created_at=job.created_at,
                max_event_ms=job.max_event_ms,
                counters=job.counters.to_json(),
                checkpoint_at=job.checkpoint_at,
                last_error=job.last_error,
                owner=owner,
                lease_until=lease_until,
            )
        )
        return bool(result.rowcount)

    async def get(self, tenant: str, job_id: str) -> StreamJob | None:
        row = (
            await self._conn.execute(
                select(stream_jobs).where(
                    stream_jobs.c.tenant == tenant, stream_jobs.c.id == job_id
                )
            )
        ).one_or_none()
        return None if row is None else _job(row)

    async def by_request(self, tenant: str, request_id: str) -> StreamJob | None:
        row = (
            await self._conn.execute(
                select(stream_jobs).where(
                    stream_jobs.c.tenant == tenant, stream_jobs.c.request_id == request_id
                )
            )
        ).one_or_none()
        return None if row is None else _job(row)

    async def page(
        self, tenant: str, after: tuple[float, str] | None, limit: int
    ) -> list[StreamJob]:
        c = stream_jobs.c
        query = select(stream_jobs).where(c.tenant == tenant)
        if after is not None:
            query = query.where(tuple_(c.created_at, c.id) > tuple_(*after))
        rows = await self._conn.execute(query.order_by(c.created_at, c.id).limit(limit))
        return [_job(row) for row in rows]

    async def delete(self, tenant: str, job_id: str) -> bool:
        result = await self._conn.execute(
            delete(stream_jobs).where(stream_jobs.c.tenant == tenant, stream_jobs.c.id == job_id)
        )
        if not result.rowcount:  # not the tenant's job: its windows are not either
            return False
        await self._conn.execute(delete(stream_windows).where(stream_windows.c.job_id == job_id))
        return True

    async def claim(self, owner: str, now: float, lease_until: float) -> list[StreamJob]:
        c = stream_jobs.c
        await self._conn.execute(
            update(stream_jobs)
            .where(or_(c.owner == owner, c.lease_until < now))
            .values(owner=owner, lease_until=lease_until)
        )
        rows = await self._conn.execute(
            select(stream_jobs).where(c.owner == owner).order_by(c.created_at)
        )
        return [_job(row) for row in rows]

    async def renew(self, job_id: str, owner: str, lease_until: float) -> bool:
        c = stream_jobs.c
        result = await self._conn.execute(
            update(stream_jobs)
            .where(c.id == job_id, c.owner == owner)
            .values(lease_until=lease_until, last_error="")
        )
        return bool(result.rowcount)

    async def release(self, owner: str, job_ids: Sequence[str]) -> None:
        c = stream_jobs.c
        await self._conn.execute(
            update(stream_jobs)
            .where(c.owner == owner, c.id.in_(list(job_ids)))
            .values(lease_until=0.0)
        )

    async def windows(self, job_id: str) -> list[WindowState]:
        w = stream_windows.c
        rows = await self._conn.execute(
            select(stream_windows).where(w.job_id == job_id).order_by(w.key, w.start_ms)
        )
        return [WindowState.from_json(r.key, r.start_ms, r.end_ms, r.state) for r in rows]

    async def checkpoint(self, cp: Checkpoint) -> None:
        c = stream_jobs.c
        result = await self._conn.execute(
            update(stream_jobs)
            .where(c.id == cp.job_id, c.owner == cp.owner)
            .values(
                max_event_ms=cp.max_event_ms,
                counters=cp.counters.to_json(),
                checkpoint_at=cp.at,
                last_error="",
                lease_until=cp.lease_until,
            )
        )
        if not result.rowcount:
            raise Fenced(cp.job_id)
        w = stream_windows.c
        gone = [*cp.deletes, *((u.key, u.start) for u in cp.upserts)]
        if gone:
            await self._conn.execute(
                delete(stream_windows).where(
                    and_(
                        w.job_id == bindparam("j"),
                        w.key == bindparam("k"),
                        w.start_ms == bindparam("s"),
                    )
                ),
                [{"j": cp.job_id, "k": key, "s": start} for key, start in gone],
            )
        if cp.upserts:
            await self._conn.execute(
                insert(stream_windows),
                [
                    {
                        "job_id": cp.job_id,
                        "key": u.key,
                        "start_ms": u.start,
                        "end_ms": u.end,
                        "state": u.to_json(),
                    }
                    for u in cp.upserts
                ],
            )
        if cp.table and cp.rows:
            await self._write_results(cp.table, cp.rows)

    async def _write_results(self, name: str, rows: Sequence[ResultRow]) -> None:
        table = result_table(name)
        await self._conn.execute(
            insert_ignoring(table),
            [
                {
                    "id": r.id,
                    "tenant": r.tenant,
                    "job_id": r.job_id,
                    "key": r.key,
                    "window_start": r.window_start,
                    "window_end": r.window_end,
                    "record_count": r.record_count,
                    "aggregates": json.dumps(r.aggregates, separators=(",", ":")),
                    "emitted_at": r.emitted_at,
                }
                for r in rows
            ],
        )

    async def record_error(self, job_id: str, owner: str, error: str) -> None:
        c = stream_jobs.c
        await self._conn.execute(
            update(stream_jobs).where(c.id == job_id, c.owner == owner).values(last_error=error)
        )

    async def ensure_table(self, tenant: str, table: str, now: float) -> None:
        if table in metadata.tables or table == "alembic_version":
            raise FailedPrecondition(
                f"table {table!r} belongs to the mesh; choose another name",
                reason="RESERVED_TABLE",
            )
        owner = await self._table_owner(table)
        if owner is not None and owner != tenant:
            raise _taken(table)

        def columns(sync_conn: Any) -> list[str] | None:
            inspector = inspect(sync_conn)
            if not inspector.has_table(table):
                return None
            return [col["name"] for col in inspector.get_columns(table)]

        found = await self._conn.run_sync(columns)
        if found is None:
            await self._conn.run_sync(result_table(table).create, checkfirst=True)
        elif sorted(found) != sorted(_RESULT_COLUMNS):
            # Only the tenant's own table is described: another table of the
            # database (another tenant's, or not the mesh's) stays opaque.
            described = f" with other columns ({', '.join(found)})" if owner else ""
            raise FailedPrecondition(
                f"table {table!r} exists{described} and is not a stream destination; a stream "
                f"destination needs exactly {', '.join(_RESULT_COLUMNS)}",
                reason="TABLE_SHAPE_MISMATCH",
            )
        elif owner is None and await self._has_rows_of_others(table, tenant):
            raise _taken(table)
        if owner is None:
            await self._conn.execute(
                insert_ignoring(stream_tables).values(name=table, tenant=tenant, created_at=now)
            )
            if await self._table_owner(table) != tenant:  # a concurrent claim won
                raise _taken(table)

    async def _table_owner(self, table: str) -> str | None:
        return (
            await self._conn.execute(
                select(stream_tables.c.tenant).where(stream_tables.c.name == table)
            )
        ).scalar_one_or_none()

    async def _has_rows_of_others(self, table: str, tenant: str) -> bool:
        """A destination table from before tables had owners: rows of another
        tenant make it that tenant's."""
        t = result_table(table)
        found = await self._conn.execute(select(t.c.id).where(t.c.tenant != tenant).limit(1))
        return found.first() is not None
