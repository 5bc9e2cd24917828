"""The memory parts a running process holds, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

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

    async def start(self) -> None:
        await self.service.start()
        try:
            interrupted = await self.sync.recover()
        except Exception:
            log.warning("could not check for interrupted sync runs", exc_info=True)
        else:
            if interrupted:
                log.info("sync runs interrupted by a dead process", extra={"runs": interrupted})
        await self.scheduler.start()

    async def stop(self) -> None:
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
