"""Cron-scheduled syncs and the ``memory.sync`` router action.

A schedule slot fires once across every replica: the slot is claimed in the
ledger (a conditional update) and the run id is derived from the slot, so
even a lost race between two claims starts one run. A slot missed by more
than ``catch_up`` seconds (the server was down) is skipped, not replayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from datamcp.core.background import cancel_and_wait
from datamcp.core.events.model import Event
from datamcp.core.events.router import Action
from datamcp.core.memory.model import Strategy, SyncMode, SyncRequest
from datamcp.core.memory.sync import SyncEngine

log = logging.getLogger(__name__)

SYNC_ACTION = "memory.sync"


def request_from(params: Mapping[str, Any], *, trigger: str, sync_id: str) -> SyncRequest:
    """A sync request from config/trigger params {stores, strategy, mode, ...}."""
    strategy = str(params.get("strategy", "") or "")
    mode = str(params.get("mode", "incremental")).lower()
    return SyncRequest(
        stores=tuple(str(s) for s in params.get("stores", [])),
        strategy=Strategy.parse(strategy) if strategy else Strategy.UNSPECIFIED,
        mode=SyncMode.FULL if mode == "full" else SyncMode.INCREMENTAL,
        dry_run=bool(params.get("dry_run", False)),
        namespace_prefix=str(params.get("namespace_prefix", "")),
        priority=tuple(str(s) for s in params.get("priority", [])),
        trigger=trigger,
        sync_id=sync_id,
    )


def sync_action(engine: SyncEngine) -> Action:
    """Router action ``memory.sync``: params {stores, strategy, mode, namespace_prefix,
    dry_run, priority}. The run id derives from the cause, so a redelivered
    event starts nothing new; the action returns when the run ends."""

    async def action(cause: Event, params: Mapping[str, Any]) -> None:
        digest = hashlib.sha256(f"{cause.tenant}:{cause.id}".encode()).hexdigest()[:24]
        req = request_from(params, trigger=f"event:{cause.type}", sync_id=f"ev-{digest}")
        await engine.synchronize(cause.tenant, req)

    return action


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    cron: str
    tenant: str
    params: Mapping[str, Any]

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Schedule:
        return cls(str(raw["name"]), str(raw["cron"]), str(raw.get("tenant", "default")), raw)

    def last_slot(self, now: float) -> float:
        """The latest slot at or before ``now`` (epoch seconds)."""
        # croniter's previous fire time from an exact slot is the one before it;
        # a tick is often exactly on its slot (EventBridge's event time is).
        slot = float(croniter(self.cron, datetime.fromtimestamp(now + 0.001, UTC)).get_prev(float))
        if slot <= now:
            return slot
        return float(croniter(self.cron, datetime.fromtimestamp(now, UTC)).get_prev(float))


class SyncScheduler:
    def __init__(
        self,
        engine: SyncEngine,
        schedules: Sequence[Schedule],
        *,
        catch_up: float = 60.0,
        tick: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._schedules = list(schedules)
        self._catch_up = catch_up
        self._tick = tick
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[Any]] = set()

    async def fire_due(self, now: float) -> int:
        """Start every schedule whose latest slot is due and unclaimed; returns how many."""
        started = 0
        for s in self._schedules:
            slot = s.last_slot(now)
            if now - slot > self._catch_up:
                continue
            if not await self._engine.ledger.claim_schedule(s.name, slot):
                continue
            req = request_from(
                s.params, trigger=f"schedule:{s.name}", sync_id=f"sched-{s.name}-{int(slot)}"[:64]
            )
            await self._engine.synchronize(s.tenant, req, wait=False)
            started += 1
        return started

    async def start(self) -> None:
        if self._schedules and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="memory-sync-scheduler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.fire_due(self._clock())
            except Exception:
                log.warning("scheduled memory sync failed to start", exc_info=True)
            await asyncio.sleep(self._tick)
