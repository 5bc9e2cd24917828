"""Repositories over one SQLAlchemy async connection."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from datamcp.adapters.sqlalchemy.tables import instance_agents, instances
from datamcp.core.instance_model import Instance, ListedAgent


class SqlInstanceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, instance: Instance) -> None:
        await self._conn.execute(
            insert(instances).values(
                id=instance.id,
                host=instance.host,
                pid=instance.pid,
                version=instance.version,
                started_at=instance.started_at,
                heartbeat_at=instance.heartbeat_at,
                stopped_at=instance.stopped_at,
            )
        )

    async def touch(self, instance_id: str, at: float) -> None:
        await self._conn.execute(
            update(instances).where(instances.c.id == instance_id).values(heartbeat_at=at)
        )

    async def stop(self, instance_id: str, at: float) -> None:
        await self._conn.execute(
            update(instances).where(instances.c.id == instance_id).values(stopped_at=at)
        )

    async def get(self, instance_id: str) -> Instance | None:
        row = (
            await self._conn.execute(select(instances).where(instances.c.id == instance_id))
        ).one_or_none()
        return None if row is None else Instance(**row._mapping)

    async def prune(self, before: float, keep: str) -> int:
        # A stopped instance's last heartbeat is before its stop.
        result = await self._conn.execute(
            delete(instances).where(instances.c.heartbeat_at < before, instances.c.id != keep)
        )
        await self._conn.execute(
            delete(instance_agents).where(
                instance_agents.c.instance_id.not_in(select(instances.c.id))
            )
        )
        return int(result.rowcount or 0)

    async def list_agent(self, instance_id: str, agent_id: str, descriptor: str, at: float) -> None:
        await self._conn.execute(
            insert(instance_agents).values(
                agent_id=agent_id, instance_id=instance_id, descriptor=descriptor, listed_at=at
            )
        )

    async def unlist_agent(self, agent_id: str) -> None:
        await self._conn.execute(
            delete(instance_agents).where(instance_agents.c.agent_id == agent_id)
        )

    async def listed_agents(self, alive_since: float) -> list[ListedAgent]:
        a, i = instance_agents, instances
        rows = await self._conn.execute(
            select(a.c.agent_id, a.c.instance_id, a.c.descriptor)
            .join(i, i.c.id == a.c.instance_id)
            .where(i.c.stopped_at.is_(None), i.c.heartbeat_at >= alive_since)
        )
        return [ListedAgent(r.agent_id, r.instance_id, r.descriptor) for r in rows]
