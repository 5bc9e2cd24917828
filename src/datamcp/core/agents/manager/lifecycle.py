"""Lifecycle: taking over what dead processes left behind, and handing work
back at shutdown so another process (or replica) runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from datamcp.core.agents.agent import Agent
from datamcp.core.agents.manager.live import LiveTask, LiveTasks
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.manager.running import TaskRunner
from datamcp.core.agents.model import Task, TaskState
from datamcp.core.agents.ports import POOL_OWNER
from datamcp.core.agents.queued import is_queue_owner
from datamcp.core.background import cancel_and_wait
from datamcp.core.instance_model import Instance
from datamcp.core.instances import is_gone, prune
from datamcp.core.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)

#: Seconds between looks for cancels recorded by other processes (a signal
#: normally brings them at once).
CANCEL_CHECK = 2.0


class Lifecycle:
    """Start-up adoption, the orphan sweep, and shutdown hand-back."""

    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        instance: Instance,
        live: LiveTasks,
        placement: Placement,
        runner: TaskRunner,
        recorder: TaskRecorder,
        policy: TaskPolicy,
        clock: Callable[[], float],
    ) -> None:
        self._uow = uow
        self._instance = instance
        self._live = live
        self._placement = placement
        self._runner = runner
        self._recorder = recorder
        self._policy = policy
        self._clock = clock
        self._orphans: asyncio.Task[None] | None = None
        self._cancels: asyncio.Task[None] | None = None
        self._look_now = asyncio.Event()
        # After a reconnect the signals say "anything may have changed".
        recorder.signals.subscribe("cancel", self._cancel_signalled)

    async def start(self) -> None:
        """Take over the tasks dead processes left behind, then keep watching
        (for those, and for cancels recorded by other processes)."""
        await self.adopt_orphans()
        self._orphans = asyncio.create_task(self._orphan_loop(), name="agent-orphans")
        self._cancels = asyncio.create_task(self._cancel_loop(), name="agent-cancels")

    async def stop(self, agents: Sequence[Agent]) -> None:
        """Interrupt running tasks and store them back QUEUED, so the next
        process (or another replica) runs them; then close ``agents``."""
        self._runner.stopping = True
        await cancel_and_wait(self._orphans, self._cancels)
        await self.hand_back()
        for agent in agents:
            with contextlib.suppress(Exception):
                await agent.close()

    async def hand_back(self) -> list[LiveTask]:
        """Interrupt every agent run of this process and store its unfinished
        tasks back as QUEUED (still owned here: once this process is gone,
        orphan recovery or a redelivery takes them over). Final-state writes
        in flight finish. Returns the tasks handed back (still live)."""
        await cancel_and_wait(
            *(
                live.runner
                for live in self._live
                if live.runner is not None and live.run is not None
            )
        )
        now = self._clock()
        back: list[LiveTask] = []
        for live in self._live.unfinished():
            self._placement.unqueue(live)
            live.task = live.task.evolve(state=TaskState.QUEUED, updated_at=now)
            back.append(live)
        if back:
            with contextlib.suppress(Exception):
                await self._recorder.publish([], [self._recorder.save(b.task) for b in back])
        return back

    async def _orphan_loop(self) -> None:
        while True:
            await asyncio.sleep(self._policy.orphan_interval)
            try:
                await self.adopt_orphans()
            except Exception:
                log.warning("orphan task check failed", exc_info=True)
            try:
                await self.prune_instances()
            except Exception:
                log.warning("instance pruning failed", exc_info=True)

    def _cancel_signalled(self, task_id: str) -> None:
        if not task_id:  # after a reconnect: anything may have been missed
            self._look_now.set()

    async def _cancel_loop(self) -> None:
        """The fallback for a missed cancel signal: look for cancel requests
        on this process's tasks every CANCEL_CHECK seconds."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_CHECK):
                    await self._look_now.wait()
            self._look_now.clear()
            if not self._live.unfinished():
                continue
            try:
                await self.cancel_requested()
            except Exception:
                log.warning("cancel request check failed", exc_info=True)

    async def cancel_requested(self) -> int:
        """End this process's tasks that another process asked to cancel."""
        async with self._uow() as tx:
            ids = await tx.tasks.cancel_requests(self._instance.id)
        ended = 0
        for task_id in ids:
            live = self._live.get(task_id)
            if live is not None and not live.task.state.final:
                self._runner.cancel_soon(live)
                ended += 1
        return ended

    async def prune_instances(self) -> int:
        """Delete the rows of instances gone longer than ``instance_retention``
        (at least ``stale_after``; never this one). Returns how many."""
        retention = max(self._policy.instance_retention, self._policy.stale_after)
        removed = await prune(self._uow, self._instance.id, retention, self._clock())
        if removed:
            log.info("pruned instance rows", extra={"count": removed})
        return removed

    async def adopt_orphans(self, *, own_too: bool = False) -> int:
        """Unfinished tasks of processes that are gone become ours and are
        re-run per ``agents.recovery`` (or failed). With ``own_too``, also
        this process's own stored tasks that no longer run here (handed back
        by an earlier Lambda invocation). Returns how many were taken."""
        me = self._instance.id
        now = self._clock()
        async with self._uow() as tx:
            gone: list[str] = []
            for owner in await tx.tasks.owners_of_unfinished():
                # Queued tasks belong to their queue until a handler claims
                # them, pooled ones to the pool until a process does.
                if is_queue_owner(owner) or owner == POOL_OWNER or (owner == me and not own_too):
                    continue
                if owner != me:
                    inst = await tx.instances.get(owner)
                    if inst is not None and not is_gone(inst, now, self._policy.stale_after):
                        continue
                gone.append(owner)
            adopted: list[Task] = await tx.tasks.adopt(me, gone) if gone else []
            await tx.commit()
        taken = [task for task in adopted if task.id not in self._live]
        for task in taken:
            self._runner.recover(task)
        if taken:
            log.info("adopted orphaned tasks", extra={"count": len(taken)})
        return len(taken)
