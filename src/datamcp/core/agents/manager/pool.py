"""The shared task pool: work any replica on the database may take.

On PostgreSQL, where several processes share one database, a new top-level
task that no agent here has room for is not queued in this process: it is
stored QUEUED under the pool's owner (``POOL_OWNER``) and announced with a
``work`` signal naming its target. Every process whose agent for that
target has room then claims the best pooled tasks it may run, as many as it
has room for, in one statement that skips rows another claimer holds
(``FOR UPDATE SKIP LOCKED``), and runs them as its own. An agent that gets
room (a task ended) claims again while the pool may hold its kind of work.

Signals are hints: every ``replicas.check_interval`` each process also
reads which targets the pool holds work for, and ends pooled tasks whose
deadline passed (exactly one process does: the rows are claimed first).
Priorities hold across the mesh (a claim takes the best first) and so do
per-agent limits (a process claims only what its agents have room for).

Child tasks (agent-to-agent calls) stay with their caller's process; so
does everything on SQLite, where one process owns the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.running import TaskRunner
from datamcp.core.agents.model import Task
from datamcp.core.agents.ports import PoolClaim
from datamcp.core.agents.registry import AgentRegistry, AgentSlot
from datamcp.core.background import cancel_and_wait
from datamcp.core.ports import UnitOfWorkFactory
from datamcp.core.resilience import CircuitState
from datamcp.core.signals import Signals

log = logging.getLogger(__name__)

#: Most expired pool tasks one process ends per look.
EXPIRE_BATCH = 100


def target_key(task: Task) -> str:
    """The ``work`` signal's key for a task: the agent it is pinned to, or its capability."""
    return f"a:{task.agent_id}" if task.pinned else f"c:{task.capability}"


def slot_keys(slot: AgentSlot) -> set[str]:
    return {f"a:{slot.id}", *(f"c:{c.name}" for c in slot.descriptor.capabilities)}


class TaskPool:
    """This process's side of the pool: what it puts in, and when it takes."""

    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        me: str,
        registry: AgentRegistry,
        placement: Placement,
        runner: TaskRunner,
        signals: Signals,
        clock: Callable[[], float],
        check_interval: float,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        self._uow = uow
        self._me = me
        self._registry = registry
        self._runner = runner
        self._signals = signals
        self._clock = clock
        self._interval = check_interval
        #: Targets (see ``target_key``) the pool may hold work for.
        self._wanted: set[str] = set()
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.claimed = 0
        if enabled:
            signals.subscribe("work", self._signalled)
            placement.on_room = self._room

    def takes(self, task: Task) -> bool:
        """Whether a new task that no agent here has room for goes to the pool."""
        return self.enabled and not task.parent_task_id

    def pooled(self, task: Task) -> None:
        """``task`` was stored in the pool: tell every process (this one too)."""
        key = target_key(task)
        self._signals.send("work", key)
        self._signalled(key)

    async def start(self) -> None:
        if self.enabled and self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="task-pool")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        self._loop = None

    # --- when to look ---------------------------------------------------------------

    def _signalled(self, key: str) -> None:
        if key:
            self._wanted.add(key)
        else:  # after a reconnect: anything may have been missed
            self._wanted.update(k for s in self._registry.all() for k in slot_keys(s))
        self._kick.set()

    def _room(self, slot: AgentSlot) -> None:
        """``slot`` has room after taking what this process had queued for it."""
        if self._wanted and not self._wanted.isdisjoint(slot_keys(slot)):
            self._kick.set()

    async def _run(self) -> None:
        while True:
            timed_out = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._kick.wait()
            if not self._kick.is_set():
                timed_out = True
            self._kick.clear()
            try:
                if timed_out:
                    await self._look()
                await self.claim()
            except Exception:
                log.warning("task pool claim failed", exc_info=True)

    async def _look(self) -> None:
        """The fallback for missed signals: what the pool holds work for;
        and end its expired tasks."""
        async with self._uow() as tx:
            targets = await tx.tasks.pooled_targets()
            expired = await tx.tasks.claim_expired(self._me, self._clock(), EXPIRE_BATCH)
            await tx.commit()
        self._wanted |= {f"a:{name}" if pinned else f"c:{name}" for pinned, name in targets}
        self._take(expired)

    # --- taking ---------------------------------------------------------------------

    async def claim(self) -> int:
        """Claim pooled work for every agent here with room. Returns how many."""
        taken = 0
        for slot in self._registry.all():
            room = slot.descriptor.max_concurrency - slot.in_flight
            keys = slot_keys(slot)
            if room <= 0 or not slot.connected or self._wanted.isdisjoint(keys):
                continue
            want = PoolClaim(
                capabilities=tuple(c.name for c in slot.descriptor.capabilities),
                agent_id=slot.id,
                tenants=slot.descriptor.tenants,
                excluded=frozenset(
                    t for t, b in slot.breakers.items() if b.state is CircuitState.OPEN
                ),
                limit=room,
            )
            async with self._uow() as tx:
                tasks = await tx.tasks.claim_pooled(self._me, want, self._clock())
                await tx.commit()
            if len(tasks) < room:
                # None left for this agent; for any agent of its kind only
                # if it may take every tenant's.
                unrestricted = want.tenants is None and not want.excluded
                self._wanted -= keys if unrestricted else {f"a:{slot.id}"}
            self._take(tasks)
            taken += len(tasks)
        self.claimed += taken
        return taken

    def _take(self, tasks: list[Task]) -> None:
        for task in tasks:
            self._runner.recover(task)  # ours now: placed here, or ended if due
