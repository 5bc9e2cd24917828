"""Placement: which agent runs a task, and where a task waits until one can.

A task goes to an available agent that may serve its tenant (see
``registry.py``), or waits in a queue: per target (a capability, or an
agent id for pinned tasks) and per tenant, a heap ordered by priority, then
arrival. When an agent has room it takes the best waiting task it may serve,
whichever tenant's it is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from datamcp.core.agents.manager.live import LiveTask, LiveTasks
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.model import TaskState
from datamcp.core.agents.registry import AgentRegistry, AgentSlot

_Entry = tuple[int, int, str]  # (-priority, arrival, task id)
_Target = tuple[bool, str]


class Starter(Protocol):
    """What placement hands tasks to (the runner)."""

    def start(self, live: LiveTask, slot: AgentSlot) -> None:
        """Run a placed task on ``slot``."""
        ...

    def expire(self, live: LiveTask) -> None:
        """A queued task reached its deadline."""
        ...


class TaskQueues:
    """Tasks waiting for an agent. A task id leaves the waiting set when it is
    taken, cancelled or expired; its heap entry is dropped when next seen."""

    def __init__(self) -> None:
        self._heaps: dict[_Target, dict[str, list[_Entry]]] = {}
        self._waiting: set[str] = set()
        self._order = itertools.count()

    def push(self, live: LiveTask) -> None:
        task = live.task
        heap = self._heaps.setdefault(live.target, {}).setdefault(task.tenant, [])
        heapq.heappush(heap, (-task.priority, next(self._order), task.id))
        self._waiting.add(task.id)

    def discard(self, task_id: str) -> None:
        self._waiting.discard(task_id)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def take(self, slot: AgentSlot, live: LiveTasks) -> LiveTask | None:
        """The best waiting task ``slot`` may run, out of its queue; or None."""
        targets = [(True, slot.id), *((False, c.name) for c in slot.descriptor.capabilities)]
        skipped: list[tuple[list[_Entry], _Entry]] = []
        try:
            while True:
                best: list[_Entry] | None = None
                for target in targets:
                    for tenant, heap in self._heaps.get(target, {}).items():
                        while heap and heap[0][2] not in self._waiting:
                            heapq.heappop(heap)  # stale: taken, cancelled or expired
                        if not heap or not slot.serves(tenant) or not slot.healthy(tenant):
                            continue
                        if best is None or heap[0] < best[0]:
                            best = heap
                if best is None:
                    return None
                entry = heapq.heappop(best)
                found = live.get(entry[2])
                if found is None:
                    self._waiting.discard(entry[2])
                    continue
                if slot.id in found.task.chain:  # may not call back into this agent
                    skipped.append((best, entry))
                    continue
                self._waiting.discard(entry[2])
                return found
        finally:
            for heap, entry in skipped:
                heapq.heappush(heap, entry)
            for target in targets:
                by_tenant = self._heaps.get(target)
                if by_tenant is not None:
                    for tenant in [t for t, heap in by_tenant.items() if not heap]:
                        del by_tenant[tenant]


class Placement:
    """Places tasks on agents or in the queues; hands placed tasks to a
    :class:`Starter` (set as ``starter`` once the runner exists)."""

    def __init__(
        self,
        registry: AgentRegistry,
        live: LiveTasks,
        recorder: TaskRecorder,
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._live = live
        self._recorder = recorder
        self._clock = clock
        self.queues = TaskQueues()
        #: Tasks sitting out a retry backoff (they count against the queue too).
        self.delayed = 0
        self.starter: Starter | None = None
        #: Told when a slot still has room after taking this process's queued
        #: tasks (the shared pool may hold more for it).
        self.on_room: Callable[[AgentSlot], None] | None = None

    @property
    def queued(self) -> int:
        return len(self.queues) + self.delayed

    def select(self, live: LiveTask) -> AgentSlot | None:
        """An available agent for the task, or None."""
        by_agent, target = live.target
        task = live.task
        return self._registry.select(target, task.tenant, by_agent=by_agent, exclude=task.chain)

    def place(self, live: LiveTask) -> None:
        """Start the task on an available agent, or queue it."""
        slot = self.select(live)
        if slot is not None:
            self._starter.start(live, slot)
            return
        if live.task.state is not TaskState.QUEUED:
            live.task = live.task.evolve(state=TaskState.QUEUED, updated_at=self._clock())
            self._recorder.record(live, None)
        self.enqueue(live)

    def enqueue(self, live: LiveTask) -> None:
        """Queue a QUEUED task until an agent has room (or its deadline)."""
        self.queues.push(live)
        live.timer = asyncio.get_running_loop().call_later(
            max(0.0, live.task.deadline - self._clock()), self._expire, live
        )

    def _expire(self, live: LiveTask) -> None:
        live.timer = None
        if live.task.id in self.queues:
            self._starter.expire(live)

    def drain(self, slot: AgentSlot) -> None:
        """Give a slot that has room the best queued tasks it may run."""
        while slot.connected and not slot.saturated:
            live = self.queues.take(slot, self._live)
            if live is None:
                if self.on_room is not None:
                    self.on_room(slot)
                return
            self._stop_timer(live)
            self._starter.start(live, slot)

    def unqueue(self, live: LiveTask) -> None:
        self.queues.discard(live.task.id)
        self._stop_timer(live)

    def claim(self, live: LiveTask, slot: AgentSlot, now: float) -> None:
        """Mark the task RUNNING on ``slot`` and take its room (not yet recorded)."""
        live.task = live.task.evolve(
            state=TaskState.RUNNING,
            attempts=live.task.attempts + 1,
            agent_id=slot.id,
            started_at=now,
            updated_at=now,
        )
        slot.in_flight += 1

    def release(self, slot: AgentSlot, *, drain: bool = True) -> None:
        """Give back the room a task took on ``slot``."""
        slot.in_flight -= 1
        if drain:
            self.drain(slot)

    @property
    def _starter(self) -> Starter:
        assert self.starter is not None, "placement needs its runner"
        return self.starter

    @staticmethod
    def _stop_timer(live: LiveTask) -> None:
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
