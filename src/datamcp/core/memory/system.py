"""The memory parts a running process holds, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from datamcp.core.background import cancel_and_wait
from datamcp.core.health import CheckResult, Status
from datamcp.core.memory.schedule import SyncScheduler
from datamcp.core.memory.service import MemoryService
from datamcp.core.memory.sync import SyncEngine

log = logging.getLogger(__name__)


@dataclass
class MemorySystem:
    service: MemoryService
    sync: SyncEngine
    scheduler: SyncScheduler
    #: Seconds between looks for sync runs of dead processes (``replicas.check_interval``).
    recovery_interval: float = 2.0
    _recovery: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        await self.service.start()
        await self._recover()
        self._recovery = asyncio.create_task(self._recovery_loop(), name="sync-recovery")
        await self.scheduler.start()

    async def _recover(self) -> None:
        try:
            interrupted = await self.sync.recover()
        except Exception:
            log.warning("could not check for interrupted sync runs", exc_info=True)
        else:
            if interrupted:
                log.info("sync runs interrupted by a dead process", extra={"runs": interrupted})

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.recovery_interval)
            await self._recover()

    async def stop(self) -> None:
        await cancel_and_wait(self._recovery)
        await self.scheduler.stop()
        await self.sync.stop()
        await self.service.stop()
        for store in self.service.stores:
            try:
                await store.close()
            except Exception:
                log.warning("closing memory store failed", extra={"store": store.id})

    def metrics(self) -> dict[str, float]:
        return {
            "stores": float(len(self.service.stores)),
            "writes": float(self.service.writes),
            "syncs_running": float(self.sync.running),
        }

    async def check(self) -> CheckResult:
        """Every store answers (a read of its change counter)."""
        results = await asyncio.gather(
            *(s.stats("default") for s in self.service.stores), return_exceptions=True
        )
        down = [
            f"{s.id}: {type(r).__name__}: {r}"
            for s, r in zip(self.service.stores, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if down:
            return CheckResult(Status.DEGRADED, "memory stores down: " + "; ".join(down))
        return CheckResult(Status.HEALTHY, f"{len(results)} memory store(s) answering")
