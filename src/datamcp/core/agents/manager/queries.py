"""Queries and control: get, list, wait for, watch and cancel a tenant's tasks.

A task this process runs is answered from memory (its freshest state); any
other from the store. Every call is scoped by the caller's tenant: another
tenant's task does not exist for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from datamcp.core import paging
from datamcp.core.agents.manager.live import LiveTasks
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.manager.running import TaskRunner, cancelled_error
from datamcp.core.agents.model import Task, TaskState
from datamcp.core.errors import FailedPrecondition, NotFound, clip
from datamcp.core.ports import UnitOfWorkFactory
from datamcp.core.signals import KeyedWaiters

#: Seconds between store reads when following a task another process runs:
#: slow while its changes are signalled, fast while signals may be missed.
WATCH_POLL, WATCH_POLL_UNSIGNALLED = 5.0, 0.5


class TaskQueries:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        live: LiveTasks,
        runner: TaskRunner,
        recorder: TaskRecorder,
        clock: Callable[[], float],
    ) -> None:
        self._uow = uow
        self._live = live
        self._runner = runner
        self._recorder = recorder
        self._clock = clock
        self._changes = KeyedWaiters(recorder.signals, "tasks")

    async def stored(self, tenant: str, task_id: str) -> Task | None:
        async with self._uow() as tx:
            return await tx.tasks.get(tenant, task_id)

    async def get(self, tenant: str, task_id: str) -> Task:
        """Raises NotFound: no such task for this tenant."""
        live = self._live.of(tenant, task_id)
        if live is not None:
            return live.task
        task = await self.stored(tenant, task_id)
        if task is None:
            raise NotFound(f"no task {clip(task_id)!r}", reason="TASK_NOT_FOUND")
        return task

    async def list_tasks(
        self,
        tenant: str,
        *,
        states: Sequence[TaskState] = (),
        capability: str = "",
        correlation_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Task], str]:
        """One page of the tenant's tasks, newest first, and the next page's token."""
        size = paging.page_size(page_size)
        before = paging.keyset(page_token)
        async with self._uow() as tx:
            tasks = await tx.tasks.page(
                tenant,
                states=states,
                capability=capability,
                correlation_id=correlation_id,
                before=before,
                limit=size,
            )
        token = paging.encode([tasks[-1].created_at, tasks[-1].id]) if len(tasks) == size else ""
        return [self._live.fresher(t) for t in tasks], token

    async def wait(self, tenant: str, task_id: str, within: float | None = None) -> Task:
        """The task once final (or as it is when ``within`` seconds pass)."""
        live = self._live.of(tenant, task_id)
        if live is None:
            return await self.get(tenant, task_id)
        if not live.done.is_set():
            # asyncio.timeout, not wait_for: no extra task per waiting call.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await live.done.wait()
        return live.task

    async def cancel(self, tenant: str, task_id: str) -> Task:
        """Cancel a task; a running agent has its work cancelled.

        Raises:
            NotFound: no such task for this tenant.
            FailedPrecondition: the task already finished.
        """
        live = self._live.of(tenant, task_id)
        if live is None:
            task = await self.get(tenant, task_id)
            if task.state.final:
                raise FailedPrecondition(
                    f"task {task.id} already ended {task.state.name}", reason="TASK_FINISHED"
                )
            # Owned by another replica (or about to be adopted): record the
            # cancellation; the owner sees it when it next writes.
            now = self._clock()
            cancelled = task.evolve(
                state=TaskState.CANCELLED, error=cancelled_error(), ended_at=now, updated_at=now
            )
            await self._recorder.publish(
                [self._recorder.event(cancelled, "task.cancelled")],
                [self._recorder.save(cancelled)],
            )
            return cancelled
        if live.task.state.final:
            raise FailedPrecondition(f"task {task_id} already ended", reason="TASK_FINISHED")
        if not self._runner.interrupt(live):
            await self._runner.finish(live, TaskState.CANCELLED, error=cancelled_error())
        await live.done.wait()
        return live.task

    async def watch(self, tenant: str, task_id: str) -> AsyncIterator[Task]:
        """The task now, then on every change until it is final."""
        live = self._live.of(tenant, task_id)
        if live is None:
            task = await self.get(tenant, task_id)
            yield task
            # Owned by another process: follow it through the store, woken by
            # its signals (the poll is the fallback).
            while not task.state.final:
                every = self._changes.poll_interval(WATCH_POLL, WATCH_POLL_UNSIGNALLED)
                await self._changes.wait(task_id, every)
                fresh = await self.get(tenant, task_id)
                if fresh != task:
                    task = fresh
                    yield task
            return
        queue: asyncio.Queue[Task] = asyncio.Queue()
        live.watchers.add(queue)
        try:
            last = live.task
            yield last
            while not last.state.final:
                last = await queue.get()
                while not queue.empty() and not last.state.final:
                    last = queue.get_nowait()  # a slow watcher sees the latest
                yield last
        finally:
            live.watchers.discard(queue)
