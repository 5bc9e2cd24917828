"""The SQLAlchemy unit of work: one connection, one transaction, rolled back
unless committed.

Database errors leave a unit of work as the core's errors where the core
must tell them apart: a lost or refused connection (or a busy SQLite file)
is ``Unavailable``, a value the database will not store is
``InvalidArgument``. Their text never carries SQL or parameters (the
original stays chained as the cause, for the log).

On SQLite, units of work in one process take turns (an asyncio lock per
engine). SQLite has one writer at a time anyway; without the lock, pooled
connections collide on its write lock and wait in its busy handler, which
sleeps in steps of milliseconds: measured, that dominated event delivery
latency. Units of work never nest, so the lock cannot deadlock.

The repositories share one executor (``executor.py``), chosen by dialect
when the connection opens.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from datamcp.adapters.sqlalchemy.agent_repository import SqlAuditRepository, SqlTaskRepository
from datamcp.adapters.sqlalchemy.errors import translate
from datamcp.adapters.sqlalchemy.event_repository import SqlEventRepository
from datamcp.adapters.sqlalchemy.executor import executor_for
from datamcp.adapters.sqlalchemy.pipeline_repository import SqlPipelineRepository
from datamcp.adapters.sqlalchemy.repositories import SqlInstanceRepository
from datamcp.adapters.sqlalchemy.stream_repository import SqlStreamRepository

_SQLITE_LOCKS: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()


def _turn(engine: AsyncEngine) -> asyncio.Lock | None:
    if engine.dialect.name != "sqlite":
        return None
    lock = _SQLITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _SQLITE_LOCKS[engine.sync_engine] = asyncio.Lock()
    return lock


class SqlUnitOfWork:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._lock = _turn(engine)
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self._instances: SqlInstanceRepository | None = None
        self._events: SqlEventRepository | None = None
        self._tasks: SqlTaskRepository | None = None
        self._audit: SqlAuditRepository | None = None
        self._pipelines: SqlPipelineRepository | None = None
        self._streams: SqlStreamRepository | None = None

    @property
    def instances(self) -> SqlInstanceRepository:
        assert self._instances is not None, "use the unit of work inside 'async with'"
        return self._instances

    @property
    def events(self) -> SqlEventRepository:
        assert self._events is not None, "use the unit of work inside 'async with'"
        return self._events

    @property
    def tasks(self) -> SqlTaskRepository:
        assert self._tasks is not None, "use the unit of work inside 'async with'"
        return self._tasks

    @property
    def audit(self) -> SqlAuditRepository:
        assert self._audit is not None, "use the unit of work inside 'async with'"
        return self._audit

    @property
    def streams(self) -> SqlStreamRepository:
        assert self._streams is not None, "use the unit of work inside 'async with'"
        return self._streams

    @property
    def pipelines(self) -> SqlPipelineRepository:
        assert self._pipelines is not None, "use the unit of work inside 'async with'"
        return self._pipelines

    async def __aenter__(self) -> Self:
        if self._lock is not None:
            await self._lock.acquire()
        try:
            self._conn = await self._engine.connect()
            self._tx = await self._conn.begin()
        except BaseException as error:
            if self._conn is not None:
                await _quietly_close(self._conn)
                self._conn = None
            if self._lock is not None:
                self._lock.release()
            if (core := translate(error)) is not None:
                raise core from error
            raise
        executor = executor_for(self._conn)  # one per connection, by dialect
        self._instances = SqlInstanceRepository(self._conn)
        self._events = SqlEventRepository(self._conn, executor)
        self._tasks = SqlTaskRepository(self._conn, executor)
        self._audit = SqlAuditRepository(self._conn)
        self._pipelines = SqlPipelineRepository(self._conn)
        self._streams = SqlStreamRepository(self._conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._tx is not None and self._tx.is_active:
                await self._tx.rollback()
        except Exception as error:
            if exc is None:  # otherwise the first error is the one to report
                if (core := translate(error)) is not None:
                    raise core from error
                raise
        finally:
            try:
                if self._conn is not None:
                    await _quietly_close(self._conn)
            finally:
                self._conn = self._tx = None
                if self._lock is not None:
                    self._lock.release()
            self._instances = self._events = None
            self._tasks = None
            self._audit = None
            self._pipelines = None
            self._streams = None
        if exc is not None and (core := translate(exc)) is not None:
            raise core from exc

    async def commit(self) -> None:
        assert self._tx is not None, "commit outside 'async with'"
        await self._tx.commit()

    async def rollback(self) -> None:
        assert self._tx is not None, "rollback outside 'async with'"
        await self._tx.rollback()


async def _quietly_close(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:  # the connection is being abandoned anyway
        return
