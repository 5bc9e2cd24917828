"""The database health check: reachable, migrated and writable."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from datamcp.core import instances
from datamcp.core.health import CheckResult, Status
from datamcp.core.ports import UnitOfWorkFactory


class DatabaseCheck:
    name = "database"
    critical = True

    def __init__(self, engine: AsyncEngine, uow: UnitOfWorkFactory, instance_id: str) -> None:
        self._engine = engine
        self._uow = uow
        self._instance_id = instance_id

    async def check(self) -> CheckResult:
        try:
            await instances.heartbeat(self._uow, self._instance_id)
        except Exception as exc:
            # A dead connection must not poison the pool for the next check.
            await self._engine.dispose()
            return CheckResult(Status.UNHEALTHY, f"database unreachable: {_short(exc)}")
        pool = self._engine.pool
        return CheckResult(
            Status.HEALTHY,
            f"{self._engine.dialect.name} reachable and writable",
            {"dialect": self._engine.dialect.name, "pool": pool.status()},
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
