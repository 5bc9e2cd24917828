"""Recording tasks: every state change is committed together with the
``task.*`` event that announces it (the event bus group commit carries the
task rows along), so the store and the bus never disagree.

Submission and the final state are awaited (durable before anyone is told);
the RUNNING mark, retries and progress ride along with whatever commit comes
next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datamcp.core.agents.manager.live import LiveTask
from datamcp.core.agents.manager.policy import FINAL_WRITE_ATTEMPTS, PROGRESS_INTERVAL
from datamcp.core.agents.model import AuditRecord, Task, TaskState
from datamcp.core.agents.ports import POOL_OWNER
from datamcp.core.errors import Unavailable
from datamcp.core.events.bus import EventBus, PublishResult
from datamcp.core.events.model import Event
from datamcp.core.ports import UnitOfWork, Write, WriteOp
from datamcp.core.resilience import RetryPolicy
from datamcp.core.signals import KeyedWaiters, LocalSignals, Signals

log = logging.getLogger(__name__)


class TaskRecorder:
    """Writes tasks and their events through the bus.

    Args:
        bus: the event bus whose group commit carries the rows.
        owner: the instance id new rows are stored under.
        retry: backoff between tries of a final-state write.
    """

    def __init__(
        self,
        bus: EventBus,
        owner: str,
        retry: RetryPolicy,
        clock: Callable[[], float],
        signals: Signals | None = None,
    ) -> None:
        self._bus = bus
        self._owner = owner
        #: Watchers of a task in other processes hear of each stored change.
        self.signals = signals or LocalSignals()
        self._retry = retry
        self._clock = clock
        #: Followers of tasks stored by any process (this one's changes too).
        self.changes = KeyedWaiters(self.signals, "tasks")
        self.insert_op = WriteOp("tasks.insert", 0, self._apply_insert)
        self._pool_op = WriteOp("tasks.pool", 0, _apply_pool)
        self.save_op = WriteOp("tasks.save", 1, self._apply_save)
        self._finish_op = WriteOp("tasks.finish", 1, self._apply_finish)
        self._audit_op = WriteOp("audit.add", 2, _apply_audit)
        self._task_ops = (self.insert_op, self._pool_op, self.save_op, self._finish_op)

    async def publish(
        self, events: Sequence[Event], writes: Sequence[Write] = ()
    ) -> list[PublishResult]:
        """Commit task rows and events together; then tell other processes
        which tasks changed."""
        results = await self._bus.publish(events, writes)
        changed = {_task_of(w).id for w in writes if w.op in self._task_ops}
        changed.update(e.subject for e in events if e.type.startswith("task.") and e.subject)
        for task_id in changed:
            self.signals.send("tasks", task_id)
            self.changes.poke(task_id)
        return results

    def insert(self, task: Task) -> Write:
        """A new task's row, under this process."""
        return Write(self.insert_op, task)

    def pooled(self, task: Task) -> Write:
        """A new task's row, in the shared pool (owned by no process yet)."""
        return Write(self._pool_op, task)

    def save(self, task: Task) -> Write:
        """A task's row as it is now."""
        return Write(self.save_op, task)

    def record(self, live: LiveTask, event_type: str | None, suffix: str = "") -> None:
        """Store the task's current state (and its event) with the next commit,
        without waiting; watchers hear of it now."""
        events = [self.event(live.task, event_type, suffix)] if event_type else []
        future = asyncio.ensure_future(self.publish(events, [self.save(live.task)]))
        future.add_done_callback(log_failure)
        live.notify()

    async def store_final(self, task: Task) -> bool:
        """Store a final state and its event, if the task is still this
        process's and not final: exactly one final state and one final event
        per task, whoever else tries (a cancel on another replica, an adopter
        that took it over). False when it was not stored for that reason. A
        store outage is retried a few times."""
        final = _Final(task, self.event(task, task.state.event_type))
        for attempt in range(1, FINAL_WRITE_ATTEMPTS + 1):
            try:
                await self.publish([], [Write(self._finish_op, final)])
                return final.applied
            except Unavailable:
                if attempt == FINAL_WRITE_ATTEMPTS:
                    break
                await asyncio.sleep(self._retry.delay(attempt))
        log.error("task final state not stored", extra={"task_id": task.id})
        return False

    def progress(self, live: LiveTask, percent: float, message: str) -> None:
        """An agent's progress report: watchers hear each, the store at most
        every PROGRESS_INTERVAL (and always at 100%)."""
        if live.task.state is not TaskState.RUNNING:
            return
        now = self._clock()
        live.task = live.task.evolve(
            progress=max(0.0, min(100.0, float(percent))),
            progress_message=message[:1024],
            updated_at=now,
        )
        if now - live.progress_at < PROGRESS_INTERVAL and percent < 100:
            live.notify()
            return
        live.progress_at = now
        live.progress_count += 1
        self.record(live, "task.progress", f":{live.task.attempts}:{live.progress_count}")

    async def audit(self, record: AuditRecord) -> None:
        """Store an agent-to-agent call record (with the next group commit)."""
        await self._bus.publish([], [Write(self._audit_op, record)])

    def event(
        self, task: Task, event_type: str, suffix: str = "", *, now: float | None = None
    ) -> Event:
        """The ``task.*`` event announcing ``task`` as it is now."""
        data: dict[str, Any] = {
            "task_id": task.id,
            "capability": task.capability,
            "agent_id": task.agent_id,
            "state": task.state.name,
            "attempt": task.attempts,
        }
        if event_type == "task.progress":
            data["progress"] = {"percent": task.progress, "message": task.progress_message}
        elif event_type in ("task.started", "task.retrying"):
            suffix = f":{task.attempts}"
        if task.error is not None:
            data["error"] = {
                "reason": task.error.reason,
                "message": task.error.message,
                "retryable": task.error.retryable,
            }
        if event_type == "task.succeeded":
            data["result"] = task.result
        return Event(
            id=f"{event_type}:{task.id}{suffix}",
            source=f"/agents/{task.agent_id}" if task.agent_id else "/datamcp/agents",
            type=event_type,
            data=data,
            subject=task.id,
            time=self._clock() if now is None else now,
            tenant=task.tenant,
            correlation_id=task.correlation_id,
        )

    async def _apply_insert(self, tx: UnitOfWork, tasks: Sequence[Task]) -> None:
        await tx.tasks.insert([(task, self._owner) for task in tasks])

    async def _apply_save(self, tx: UnitOfWork, tasks: Sequence[Task]) -> None:
        latest: dict[str, Task] = {}
        for task in tasks:  # one row per task: the last state written wins
            latest.pop(task.id, None)
            latest[task.id] = task
        await tx.tasks.save(list(latest.values()), self._owner)

    async def _apply_finish(self, tx: UnitOfWork, finals: Sequence[_Final]) -> None:
        """Final states, each only where the row is still ours and unfinished
        (rows locked first), with their events appended in the same commit."""
        held = await tx.tasks.holders([f.task.id for f in finals])
        done: list[_Final] = []
        for final in finals:
            owner, state = held.get(final.task.id, ("", TaskState.SUCCEEDED))
            if (
                owner == self._owner
                and not state.final
                and all(d.task.id != final.task.id for d in done)
            ):
                done.append(final)
        await tx.tasks.save([f.task for f in done], self._owner)
        await tx.events.append([f.event for f in done], self._clock())
        for final in done:
            final.applied = True


def log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("task state write failed", exc_info=exc)


@dataclass(eq=False, slots=True)
class _Final:
    """A final state on its way to the store: ``applied`` once it landed."""

    task: Task
    event: Event
    applied: bool = False


def _task_of(write: Write) -> Task:
    item = write.item
    return item.task if isinstance(item, _Final) else item


async def _apply_pool(tx: UnitOfWork, tasks: Sequence[Task]) -> None:
    await tx.tasks.insert([(task, POOL_OWNER) for task in tasks])


async def _apply_audit(tx: UnitOfWork, records: Sequence[AuditRecord]) -> None:
    await tx.audit.add(records)
