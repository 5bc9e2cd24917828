"""Server instances: who is running against this database, and since when.

Each server registers itself at start and heartbeats every
``replicas.heartbeat_interval`` (the database health check writes one too,
which proves the database is reachable *and* writable). Services use the
registry to tell work owned by a dead process from work owned by a live
one: silent for ``replicas.stale_after``, or its pid gone on this host.
The records themselves are in ``instance_model``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from datamcp.core.background import wait_at_most
from datamcp.core.instance_model import Instance
from datamcp.core.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)


async def register(uow: UnitOfWorkFactory, instance: Instance) -> None:
    async with uow() as tx:
        await tx.instances.add(instance)
        await tx.commit()


async def heartbeat(uow: UnitOfWorkFactory, instance_id: str) -> None:
    async with uow() as tx:
        await tx.instances.touch(instance_id, time.time())
        await tx.commit()


async def heartbeats(
    uow: UnitOfWorkFactory, instance_id: str, every: float, stop: asyncio.Event
) -> None:
    """Heartbeat every ``every`` seconds until ``stop`` is set (a beat in
    progress finishes: a write is not cut off mid-statement). A failed write
    is logged and tried again at the next beat: the others see this process
    as gone only after ``stale_after`` without one."""
    while not stop.is_set():
        try:
            await heartbeat(uow, instance_id)
        except Exception:
            log.warning("instance heartbeat failed", exc_info=True)
        await wait_at_most(stop, every)


async def mark_stopped(uow: UnitOfWorkFactory, instance_id: str) -> None:
    async with uow() as tx:
        await tx.instances.stop(instance_id, time.time())
        await tx.commit()


#: How long the row of a stopped or silent instance is kept (Lambda containers
#: leave one per cold start and are never told they are discarded).
RETENTION = 86_400.0


async def prune(uow: UnitOfWorkFactory, keep: str, retention: float, now: float) -> int:
    """Delete the rows of instances that have not heartbeated (or stopped) for
    ``retention`` seconds, never ``keep`` (the caller). Their unfinished
    tasks stay adoptable: an owner without a row counts as gone."""
    async with uow() as tx:
        removed = await tx.instances.prune(now - retention, keep)
        await tx.commit()
    return removed


def is_gone(instance: Instance, now: float, stale_after: float) -> bool:
    """Whether an instance's process is certainly dead: it said it stopped,
    it has not heartbeated for ``stale_after`` seconds, or it ran on this
    host and its pid no longer exists (a crash seen at restart)."""
    if instance.stopped_at is not None or now - instance.heartbeat_at > stale_after:
        return True
    if instance.host == socket.gethostname() and instance.pid != os.getpid():
        try:
            os.kill(instance.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False
