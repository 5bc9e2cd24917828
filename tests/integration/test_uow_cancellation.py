"""A unit of work cancelled half-way (a health check timing out, a client
going away) still returns its connection: the pool never starves."""

from __future__ import annotations

import asyncio
import contextlib

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork


async def test_cancelled_units_of_work_give_their_connections_back(database_url: str) -> None:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    try:

        async def slow_unit() -> None:
            async with SqlUnitOfWork(engine) as tx:
                await tx.events.max_seq()
                await asyncio.sleep(10)

        for i in range(40):  # more than pool size + overflow
            task = asyncio.create_task(slow_unit())
            await asyncio.sleep(0.005)
            task.cancel()  # lands in the body...
            for _ in range(i % 4):
                await asyncio.sleep(0)
            task.cancel()  # ...and again while it cleans up
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with asyncio.timeout(5), SqlUnitOfWork(engine) as tx:
            assert await tx.events.max_seq() == 0
    finally:
        await engine.dispose()
