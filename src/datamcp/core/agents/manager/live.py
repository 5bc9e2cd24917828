"""The tasks this process owns and has not finished, and who watches them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.agents.model import Task

#: Why an agent run stopped being awaited (see ``AgentRun``).
DONE, DEADLINE, CANCEL = "done", "deadline", "cancel"


@dataclass(eq=False, slots=True)
class AgentRun:
    """One attempt in flight: the agent's own asyncio task, and the future
    its runner awaits, settled by whichever comes first of the agent
    finishing (``DONE``), the deadline (``DEADLINE``) or a cancel (``CANCEL``)."""

    task: asyncio.Future[Any]
    ended: asyncio.Future[str]

    def settle(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


@dataclass(eq=False, slots=True)
class LiveTask:
    """A task this process owns and has not finished."""

    task: Task
    done: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: set[asyncio.Queue[Task]] = field(default_factory=set)
    #: What drives the task now: its run, or the write of its final state.
    runner: asyncio.Task[None] | None = None
    #: The agent run in flight, if any.
    run: AgentRun | None = None
    #: Expires the task while it waits in a queue.
    timer: asyncio.TimerHandle | None = None
    cancel_requested: bool = False
    progress_at: float = 0.0
    progress_count: int = 0
    #: The insert, when the task was started before it was stored.
    stored: asyncio.Future[Any] | None = None
    #: Its final state is set here but not stored yet: nobody is shown it
    #: until it is (``done`` is set then).
    final_pending: bool = False

    @property
    def target(self) -> tuple[bool, str]:
        """(by agent id, the agent id or capability it goes to)."""
        t = self.task
        return (True, t.agent_id) if t.pinned else (False, t.capability)

    def notify(self) -> None:
        for queue in self.watchers:
            queue.put_nowait(self.task)


class LiveTasks:
    """The table of live tasks by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, LiveTask] = {}

    def get(self, task_id: str) -> LiveTask | None:
        return self._by_id.get(task_id)

    def of(self, tenant: str, task_id: str) -> LiveTask | None:
        """The live task ``task_id`` if it is ``tenant``'s."""
        live = self._by_id.get(task_id)
        return live if live is not None and live.task.tenant == tenant else None

    def add(self, task: Task) -> LiveTask:
        live = self._by_id[task.id] = LiveTask(task)
        return live

    def forget(self, live: LiveTask) -> None:
        if self._by_id.get(live.task.id) is live:
            del self._by_id[live.task.id]

    def fresher(self, task: Task) -> Task:
        """The live state of a stored task, when this process runs it."""
        live = self._by_id.get(task.id)
        return live.task if live is not None and not live.final_pending else task

    def unfinished(self) -> list[LiveTask]:
        return [live for live in self._by_id.values() if not live.task.state.final]

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._by_id

    def __iter__(self) -> Iterator[LiveTask]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
