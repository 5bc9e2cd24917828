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
from datamcp.core.agents.ports import POOL_OWNER
from datamcp.core.agents.queued import is_queue_owner
from datamcp.core.errors import DeadlineExceeded, FailedPrecondition, NotFound, clip
from datamcp.core.instances import is_gone
from datamcp.core.ports import UnitOfWorkFactory

#: Seconds a cancel of a task another process runs waits for its final state,
#: and between its store reads meanwhile (it is woken by the owner's signal).
CANCEL_WAIT, CANCEL_POLL = 10.0, 1.0
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
        *,
        me: str,
        stale_after: float,
    ) -> None:
        self._me = me
        self._stale = stale_after
        self._uow = uow
        self._live = live
        self._runner = runner
        self._recorder = recorder
        self._clock = clock
        self._changes = recorder.changes

    async def stored(self, tenant: str, task_id: str) -> Task | None:
        async with self._uow() as tx:
            return await tx.tasks.get(tenant, task_id)

    async def get(self, tenant: str, task_id: str) -> Task:
        """Raises NotFound: no such task for this tenant."""
        live = self._live.of(tenant, task_id)
        if live is not None:
            if live.final_pending:  # a final state is shown once it is stored
                await live.done.wait()
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
        fits: paging.Fits | None = None,
    ) -> tuple[list[Task], str]:
        """One page of the tenant's tasks, newest first, and the next page's
        token (``fits``: see :func:`paging.fill`)."""
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
        page, more = paging.fill([self._live.fresher(t) for t in tasks], len(tasks) == size, fits)
        token = paging.encode([page[-1].created_at, page[-1].id]) if more and page else ""
        return page, token

    async def wait(self, tenant: str, task_id: str, within: float | None = None) -> Task:
        """The task once final (or as it is when ``within`` seconds pass),
        whichever process runs it."""
        deadline = None if within is None else self._clock() + within
        live = self._live.of(tenant, task_id)
        if live is None:
            # Run by another process (or waiting in the pool): follow the store.
            with self._changes.listen(task_id) as changed:
                task = await self.get(tenant, task_id)
                while live is None and not task.state.final:
                    left = None if deadline is None else deadline - self._clock()
                    if left is not None and left <= 0:
                        return task
                    every = self._changes.poll_interval(WATCH_POLL, WATCH_POLL_UNSIGNALLED)
                    await changed.wait(every if left is None else min(left, every))
                    live = self._live.of(tenant, task_id)
                    if live is None:
                        task = await self.get(tenant, task_id)
            if live is None:
                return task
        within = None if deadline is None else max(0.0, deadline - self._clock())
        if not live.done.is_set():
            # asyncio.timeout, not wait_for: no extra task per waiting call.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await live.done.wait()
        return live.task

    async def cancel(self, tenant: str, task_id: str) -> Task:
        """Cancel a task; a running agent has its work cancelled, whichever
        process runs it.

        A task this process owns ends here. Any other is given a durable
        cancel request that its owner acts on (told at once by a signal,
        else by its next look); a task nobody runs (waiting in a queue, or
        left by a process that is gone) is taken over and ended here. The
        answer waits for the final state: exactly one, whoever asked.

        Raises:
            NotFound: no such task for this tenant.
            FailedPrecondition: the task already finished (or finished
                before the cancel reached it).
            DeadlineExceeded: its owner has not ended it within CANCEL_WAIT
                (the request stands; follow the task with WatchTask).
        """
        live = self._live.of(tenant, task_id)
        if live is None:
            return await self._cancel_elsewhere(tenant, task_id)
        if live.task.state.final:
            raise FailedPrecondition(f"task {task_id} already ended", reason="TASK_FINISHED")
        if not self._runner.interrupt(live):
            await self._runner.finish(live, TaskState.CANCELLED, error=cancelled_error())
        await live.done.wait()
        return _cancelled(live.task)

    async def _cancel_elsewhere(self, tenant: str, task_id: str) -> Task:
        async with self._uow() as tx:
            requested = await tx.tasks.request_cancel(tenant, task_id, self._clock())
            await tx.commit()
        if requested is None:  # no such task (NotFound), or it had ended
            ended = await self.get(tenant, task_id)
            raise FailedPrecondition(
                f"task {ended.id} already ended {ended.state.name}", reason="TASK_FINISHED"
            )
        self._recorder.signals.send("cancel", task_id)
        if task_id not in self._live:  # it may have just become ours
            await self._take_if_orphaned(requested)
        live = self._live.of(tenant, task_id)
        if live is not None:  # ours now (taken over, or it moved here meanwhile)
            self._runner.cancel_soon(live)
            await live.done.wait()
            return _cancelled(live.task)
        deadline = self._clock() + CANCEL_WAIT
        with self._changes.listen(task_id) as changed:
            task = await self.get(tenant, task_id)
            while not task.state.final and (left := deadline - self._clock()) > 0:
                await changed.wait(min(left, CANCEL_POLL))
                task = await self.get(tenant, task_id)
        if not task.state.final:
            raise DeadlineExceeded(
                f"cancel of task {task_id} requested; it has not stopped yet: "
                "follow it with WatchTask",
                reason="CANCEL_PENDING",
                metadata={"task_id": task_id},
            )
        return _cancelled(task)

    async def _take_if_orphaned(self, task: Task) -> None:
        """Adopt a task nobody runs: owned by a queue or the pool, or by a
        process that is gone (it then ends, cancelled, through recovery)."""
        owner = await self._owner_of(task.id)
        if owner is None or owner == self._me:
            return
        async with self._uow() as tx:
            if not is_queue_owner(owner) and owner != POOL_OWNER:
                holder = await tx.instances.get(owner)
                if holder is not None and not is_gone(holder, self._clock(), self._stale):
                    return
            adopted = await tx.tasks.adopt(self._me, [owner], [task.id])
            await tx.commit()
        for found in adopted:
            if found.id not in self._live:
                self._runner.recover(found)

    async def _owner_of(self, task_id: str) -> str | None:
        async with self._uow() as tx:
            held = await tx.tasks.holders([task_id])
        return held[task_id][0] if task_id in held else None

    async def watch(self, tenant: str, task_id: str) -> AsyncIterator[Task]:
        """The task now, then on every change until it is final."""
        live = self._live.of(tenant, task_id)
        if live is None:
            # Owned by another process: follow it through the store, woken by
            # its signals (the poll is the fallback).
            with self._changes.listen(task_id) as changed:
                task = await self.get(tenant, task_id)
                yield task
                while not task.state.final:
                    every = self._changes.poll_interval(WATCH_POLL, WATCH_POLL_UNSIGNALLED)
                    await changed.wait(every)
                    live = self._live.of(tenant, task_id)
                    if live is not None:  # it became ours (claimed from the pool)
                        break
                    fresh = await self.get(tenant, task_id)
                    if fresh != task:
                        task = fresh
                        yield task
            if live is None:
                return
            seen: Task | None = task
        else:
            seen = None
        queue: asyncio.Queue[Task] = asyncio.Queue()
        live.watchers.add(queue)
        try:
            last = live.task
            if last != seen:
                yield last
            while not last.state.final:
                last = await queue.get()
                while not queue.empty() and not last.state.final:
                    last = queue.get_nowait()  # a slow watcher sees the latest
                yield last
        finally:
            live.watchers.discard(queue)


def _cancelled(task: Task) -> Task:
    """The answer to a cancel: the task, when the cancel ended it.

    Raises:
        FailedPrecondition: it ended otherwise (before the cancel reached it).
    """
    if task.state is TaskState.CANCELLED:
        return task
    raise FailedPrecondition(
        f"task {task.id} already ended {task.state.name}", reason="TASK_FINISHED"
    )
