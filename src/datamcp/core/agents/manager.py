"""The agent manager: validates and stores tasks, places them on agents,
runs them with timeouts, retries and cancellation, and records every change.

Every state change is committed together with the ``task.*`` event that
announces it (the event bus group commit carries the task rows along), so
the store and the bus never disagree. Submission and the final state are
awaited (durable before anyone is told); the RUNNING mark and progress ride
along with whatever commit comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core import paging
from datamcp.core.agents.agent import (
    Agent,
    AgentDescriptor,
    AgentError,
    Capability,
)
from datamcp.core.agents.calls import AgentCalls
from datamcp.core.agents.model import (
    AuditRecord,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
    task_id_for,
)
from datamcp.core.agents.queued import QueuedTasks, is_queue_owner
from datamcp.core.agents.registry import AgentRegistry, AgentSlot, Runner, new_slot
from datamcp.core.agents.schema import SchemaCache
from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import (
    DataMCPError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Event
from datamcp.core.instances import RETENTION, Instance, is_gone, prune
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory, Write, WriteOp
from datamcp.core.resilience import RetryPolicy

log = logging.getLogger(__name__)

MIN_PRIORITY, MAX_PRIORITY = -100, 100
#: Progress is published at most this often per task (the last one always is).
PROGRESS_INTERVAL = 0.2
#: A task's final state is stored before anyone hears of it; a store outage
#: gets this many tries.
FINAL_WRITE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    queue_size: int = 10_000
    default_timeout: float = 300.0
    min_timeout: float = 0.01
    max_timeout: float = 86_400.0
    max_attempts: int = 3
    retry_base_delay: float = 0.1
    retry_max_delay: float = 10.0
    max_input_bytes: int = 1024 * 1024
    max_call_depth: int = 8
    recovery: str = "retry"
    remote_disconnect: str = "requeue"
    orphan_interval: float = 30.0
    stale_after: float = 60.0
    #: Rows of instances silent or stopped this long are deleted by the sweep.
    instance_retention: float = RETENTION


_Outcome = tuple[TaskState, Any, TaskError | None]


@dataclass(eq=False, slots=True)
class _Live:
    """A task this process owns and has not finished."""

    task: Task
    done: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: set[asyncio.Queue[Task]] = field(default_factory=set)
    runner: asyncio.Task[None] | None = None
    inner: asyncio.Future[Any] | None = None
    timer: asyncio.TimerHandle | None = None
    cancel_requested: bool = False
    progress_at: float = 0.0
    progress_count: int = 0
    #: The insert, when the task was started before it was stored.
    stored: asyncio.Future[Any] | None = None

    @property
    def target(self) -> tuple[bool, str]:
        t = self.task
        return (True, t.agent_id) if t.pinned else (False, t.capability)


class _Context:
    """The :class:`TaskContext` an agent gets for one attempt."""

    def __init__(self, manager: AgentManager, live: _Live, agent_id: str) -> None:
        self._manager = manager
        self._live = live
        self.agent_id = agent_id

    @property
    def task_id(self) -> str:
        return self._live.task.id

    @property
    def tenant(self) -> str:
        return self._live.task.tenant

    @property
    def correlation_id(self) -> str:
        return self._live.task.correlation_id

    @property
    def attempt(self) -> int:
        return self._live.task.attempts

    @property
    def deadline(self) -> float:
        return self._live.task.deadline

    def remaining(self) -> float:
        return max(0.0, self._live.task.deadline - time.time())

    async def progress(self, percent: float, message: str = "") -> None:
        self._manager._progress(self._live, percent, message)

    async def call(self, target: str, payload: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        task, _ = await self._manager.calls.call(
            self._live.task, self.agent_id, target, payload, limit=timeout
        )
        return task.result


class AgentManager:
    def __init__(
        self,
        bus: EventBus,
        uow: UnitOfWorkFactory,
        instance: Instance,
        *,
        policy: TaskPolicy | None = None,
        strategy: str = "least_loaded",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._uow = uow
        self._instance = instance
        self.policy = p = policy or TaskPolicy()
        self.registry = AgentRegistry(strategy)
        self._clock = clock
        self._retry = RetryPolicy(p.max_attempts, p.retry_base_delay, p.retry_max_delay)
        self._schemas = SchemaCache()
        self._live: dict[str, _Live] = {}
        self._queues: dict[tuple[bool, str], list[tuple[int, int, str]]] = {}
        #: Ids of tasks in the queues, waiting for an agent.
        self._waiting: set[str] = set()
        #: Tasks sitting out a retry backoff (they count against the queue too).
        self._delayed = 0
        self._order = itertools.count()
        self._agents: list[Agent] = []
        self._orphans: asyncio.Task[None] | None = None
        self._stopping = False
        self._insert = WriteOp("tasks.insert", 0, self._apply_insert)
        self._save = WriteOp("tasks.save", 1, _apply_save)
        self._audit = WriteOp("audit.add", 2, _apply_audit)
        self.calls = AgentCalls(self)
        #: Queued execution: tasks handed to a queue and run by its handlers.
        self.queued_tasks = QueuedTasks(self)
        self.completed = 0
        self.failed = 0

    # --- agents ---------------------------------------------------------------------

    def add_agent(self, agent: Agent, agent_id: str | None = None) -> AgentSlot:
        """Host an in-process agent (built-in or plugin)."""
        descriptor = AgentDescriptor(
            id=agent_id or f"{agent.kind}:{agent.name}",
            name=agent.name,
            description=agent.description,
            kind=agent.kind,
            capabilities=tuple(agent.capabilities),
            max_concurrency=max(1, agent.max_concurrency),
            weight=max(1, agent.weight),
        )
        self._agents.append(agent)
        return self.attach(descriptor, agent)

    def attach(self, descriptor: AgentDescriptor, runner: Runner) -> AgentSlot:
        """Host an agent by its descriptor (remote agents come in this way)."""
        for cap in descriptor.capabilities:
            self._schemas.check_schema(cap)
        if self.registry.get(descriptor.id) is not None:
            raise FailedPrecondition(f"agent {descriptor.id} is already registered")
        slot = new_slot(descriptor, runner)
        self.registry.add(slot)
        self._drain(slot)
        return slot

    def detach(self, agent_id: str) -> None:
        """Stop hosting an agent; its queued tasks stay queued for others."""
        slot = self.registry.remove(agent_id)
        if slot is not None:
            slot.connected = False

    def agents(self, capability: str = "") -> list[AgentSlot]:
        slots = self.registry.all()
        return [s for s in slots if s.offers(capability)] if capability else slots

    def agent(self, agent_id: str) -> AgentSlot:
        slot = self.registry.get(agent_id)
        if slot is None:
            raise NotFound(f"no agent {agent_id!r}", reason="AGENT_NOT_FOUND")
        return slot

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Take over the tasks dead processes left behind, then keep watching."""
        await self.adopt_orphans()
        self._orphans = asyncio.create_task(self._orphan_loop(), name="agent-orphans")

    async def stop(self) -> None:
        """Interrupt running tasks and hand them back to the queue in the store,
        so the next process (or another replica) runs them."""
        self._stopping = True
        await cancel_and_wait(self._orphans)
        # Only agent runs are interrupted; final-state writes in flight finish.
        runners = [
            live.runner
            for live in self._live.values()
            if live.runner is not None and live.inner is not None
        ]
        await cancel_and_wait(*runners)
        interrupted = [
            live.task.evolve(state=TaskState.QUEUED, updated_at=self._clock())
            for live in self._live.values()
            if not live.task.state.final
        ]
        if interrupted:
            with contextlib.suppress(Exception):
                await self._bus.publish([], [Write(self._save, t) for t in interrupted])
        for live in self._live.values():
            if live.timer is not None:
                live.timer.cancel()
        for agent in self._agents:
            with contextlib.suppress(Exception):
                await agent.close()

    async def _orphan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.orphan_interval)
            try:
                await self.adopt_orphans()
            except Exception:
                log.warning("orphan task check failed", exc_info=True)
            try:
                await self.prune_instances()
            except Exception:
                log.warning("instance pruning failed", exc_info=True)

    async def prune_instances(self) -> int:
        """Delete the rows of instances gone longer than ``instance_retention``
        (at least ``stale_after``; never this one). Returns how many."""
        retention = max(self.policy.instance_retention, self.policy.stale_after)
        removed = await prune(self._uow, self._instance.id, retention, self._clock())
        if removed:
            log.info("pruned instance rows", extra={"count": removed})
        return removed

    async def adopt_orphans(self) -> int:
        """Unfinished tasks of processes that are gone become ours: re-run per
        ``agents.recovery``, or fail. Returns how many were taken."""
        now = self._clock()
        async with self._uow() as tx:
            owners = await tx.tasks.owners_of_unfinished()
            gone = []
            for owner in owners:
                # Queued tasks belong to their queue until a handler claims them.
                if owner == self._instance.id or is_queue_owner(owner):
                    continue
                inst = await tx.instances.get(owner)
                if inst is None or is_gone(inst, now, self.policy.stale_after):
                    gone.append(owner)
            adopted = await tx.tasks.adopt(self._instance.id, gone) if gone else []
            await tx.commit()
        for task in adopted:
            self._recover(task)
        if adopted:
            log.info("adopted orphaned tasks", extra={"count": len(adopted)})
        return len(adopted)

    def _recover(self, task: Task) -> None:
        now = self._clock()
        live = _Live(task)
        self._live[task.id] = live
        if task.deadline <= now:
            self._finish_soon(live, TaskState.TIMED_OUT, error=_timeout_error(task))
        elif task.state is TaskState.RUNNING and (
            self.policy.recovery == "fail" or task.attempts >= task.max_attempts
        ):
            error = TaskError("PROCESS_DIED", "the process running the task died", True)
            self._finish_soon(live, TaskState.FAILED, error=error)
        else:
            self._place(live)

    # --- submission -----------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        spec: TaskSpec,
        *,
        wait_limit: float | None = None,
        parent: Task | None = None,
        chain: tuple[str, ...] = (),
        depth: int = 0,
        wait_stored: bool = True,
    ) -> tuple[Task, bool]:
        """Validate and store a task, then place it. Returns (task, duplicate).

        ``wait_limit`` is how long the caller will wait (a call deadline): the
        task's timeout defaults to it. With ``wait_stored`` False the task
        starts while its insert is still on the way to the store (it lands in
        the next group commit, before any later state of the task); a caller
        that waits for the result this way (:meth:`execute`) saves one commit
        round trip and learns of a store failure from :meth:`wait`.

        Raises:
            InvalidArgument: unknown capability or agent, input against the
                schema or too large, timeout out of range, bad priority.
            ResourceExhausted: the queue is full.
            Unavailable: the store cannot be written.
        """
        now = self._clock()
        timeout, capability, input_json = self._validate(spec, wait_limit)
        task_id = task_id_for(tenant, spec.request_id)
        known = self._live.get(task_id)
        if known is not None:
            return known.task, True
        if spec.request_id:
            async with self._uow() as tx:
                stored = await tx.tasks.get(tenant, task_id)
            if stored is not None:
                return stored, True
        if self.queued >= self.policy.queue_size:
            raise ResourceExhausted(
                f"the task queue is full ({self.queued} waiting); retry later",
                retry_after=1.0,
                subject=tenant,
                quota="agents.queue_size",
                reason="QUEUE_FULL",
            )
        task = self.new_task(
            tenant,
            spec,
            task_id=task_id,
            timeout=timeout,
            capability=capability,
            now=now,
            parent=parent,
            chain=chain,
            depth=depth,
            input_json=input_json,
        )
        live = _Live(task)
        self._live[task_id] = live
        # The task is placed before it is stored, and stored as placed: one
        # insert (RUNNING or QUEUED) and one commit carry task.submitted and,
        # when an agent is free, task.started (see docs/architecture.md).
        events = [self._event(task, "task.submitted", now=now)]
        by_agent, target = live.target
        slot = self.registry.select(target, by_agent=by_agent, exclude=chain)
        if slot is not None:
            self._claim(live, slot, now)
            events.append(self._event(live.task, "task.started", now=now))
        else:
            live.task = task.evolve(state=TaskState.QUEUED)
        insert = self._bus.publish(events, [Write(self._insert, live.task)])
        if not wait_stored:
            live.stored = asyncio.ensure_future(insert)
            live.stored.add_done_callback(_log_failure)
            self._placed(live, slot)
            return live.task, False
        try:
            result = (await insert)[0]
        except BaseException:
            self._unclaim(live, slot)
            raise
        if result.duplicate:  # another replica stored it first
            self._unclaim(live, slot)
            async with self._uow() as tx:
                stored = await tx.tasks.get(tenant, task_id)
            if stored is None:
                raise Unavailable("task submission raced with a delete; retry")
            return stored, True
        self._placed(live, slot)
        return live.task, False

    def _placed(self, live: _Live, slot: AgentSlot | None) -> None:
        """Run a new task on the slot it claimed, or queue it (already QUEUED)."""
        if live.task.state.final:  # cancelled while its insert was on the way
            if slot is not None:
                slot.in_flight -= 1
                self._drain(slot)
            return
        if slot is not None:
            self._notify(live)
            self._launch(live, slot)
        else:
            self._enqueue(live)

    def _unclaim(self, live: _Live, slot: AgentSlot | None) -> None:
        """Undo a submission that was not stored: forget it, free its slot."""
        self._live.pop(live.task.id, None)
        if slot is not None:
            slot.in_flight -= 1
            if not self._stopping:
                self._drain(slot)

    def new_task(
        self,
        tenant: str,
        spec: TaskSpec,
        *,
        task_id: str,
        timeout: float,
        capability: str,
        now: float,
        parent: Task | None = None,
        chain: tuple[str, ...] = (),
        depth: int = 0,
        input_json: str | None = None,
    ) -> Task:
        """A PENDING task for a validated spec (see :meth:`_validate`)."""
        return Task(
            id=task_id,
            tenant=tenant,
            capability=capability,
            agent_id=spec.agent_id,
            pinned=bool(spec.agent_id),
            input=spec.input,
            priority=spec.priority,
            # A child never outlives its caller.
            deadline=min(now + timeout, parent.deadline) if parent else now + timeout,
            timeout=timeout,
            request_id=spec.request_id,
            state=TaskState.PENDING,
            attempts=0,
            max_attempts=spec.max_attempts or self.policy.max_attempts,
            correlation_id=spec.correlation_id
            or (parent.correlation_id if parent else "")
            or task_id,
            created_at=now,
            updated_at=now,
            parent_task_id=parent.id if parent else "",
            depth=depth,
            chain=chain,
            input_json=input_json,
        )

    def _validate(self, spec: TaskSpec, wait_limit: float | None) -> tuple[float, str, str | None]:
        """Check everything before storing; returns (timeout, capability to run,
        the input as JSON)."""
        p = self.policy
        bad: list[FieldViolation] = []
        capability = spec.capability
        cap: Capability | None = None
        if spec.agent_id:  # pinned to one agent: it must offer the capability
            slot = self.registry.get(spec.agent_id)
            offered = slot.descriptor.capabilities if slot else ()
            if slot is None:
                bad.append(FieldViolation("task.agent_id", f"no agent {spec.agent_id!r}"))
            elif not capability and len(offered) == 1:
                capability = offered[0].name
            elif not capability:
                names = ", ".join(c.name for c in offered)
                bad.append(FieldViolation("task.capability", f"name one of: {names}"))
            if slot is not None and capability:
                cap = slot.capability(capability)
                if cap is None:
                    bad.append(
                        FieldViolation(
                            "task.capability",
                            f"agent {spec.agent_id} does not offer {capability!r}",
                        )
                    )
        elif not capability:
            bad.append(FieldViolation("task.capability", "set a capability or an agent_id"))
        elif (cap := self.registry.capability(capability)) is None:
            known = sorted({c.name for s in self.registry.all() for c in s.descriptor.capabilities})
            bad.append(
                FieldViolation(
                    "task.capability",
                    f"no agent offers {capability!r} (known: {', '.join(known) or 'none'})",
                )
            )
        if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
            bad.append(FieldViolation("task.priority", f"{MIN_PRIORITY} to {MAX_PRIORITY}"))
        if len(spec.request_id) > 128:
            bad.append(FieldViolation("task.request_id", "at most 128 characters"))
        if spec.max_attempts < 0 or spec.max_attempts > 100:
            bad.append(FieldViolation("task.max_attempts", "0 (default) to 100"))
        if spec.timeout is None:
            timeout = min(p.default_timeout, wait_limit) if wait_limit else p.default_timeout
            where = "the call deadline"
        else:
            timeout = min(spec.timeout, wait_limit) if wait_limit else spec.timeout
            where = "task.timeout"
        if not p.min_timeout <= timeout <= p.max_timeout:
            bad.append(
                FieldViolation(
                    "task.timeout",
                    f"{where} leaves {timeout:.3f}s; must be {p.min_timeout}s to {p.max_timeout}s",
                )
            )
        input_json = self._input_json(spec.input, bad)
        if not bad and cap is not None:
            bad.extend(self._schemas.violations(cap, spec.input, "task.input"))
        if bad:
            raise InvalidArgument("invalid task; nothing was stored", bad, reason="INVALID_TASK")
        return timeout, capability, input_json

    def _input_json(self, value: Any, bad: list[FieldViolation]) -> str | None:
        """The input as compact JSON (stored as is), or None with a violation."""
        try:
            encoded = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError):
            bad.append(FieldViolation("task.input", "must be JSON"))
            return None
        size = len(encoded)  # ASCII: json.dumps escapes everything else
        limit = self.policy.max_input_bytes
        if size > limit:
            bad.append(FieldViolation("task.input", f"{size} bytes is over the {limit}-byte limit"))
        return encoded

    # --- placement ------------------------------------------------------------------

    def _place(self, live: _Live) -> None:
        """Start the task on an available agent, or queue it."""
        by_agent, target = live.target
        slot = self.registry.select(target, by_agent=by_agent, exclude=live.task.chain)
        if slot is not None:
            self._start(live, slot)
            return
        if live.task.state is not TaskState.QUEUED:
            live.task = live.task.evolve(state=TaskState.QUEUED, updated_at=self._clock())
            self._record(live, None)
        self._enqueue(live)

    def _enqueue(self, live: _Live) -> None:
        """Put a QUEUED task in its target's heap until an agent has room."""
        heapq.heappush(
            self._queues.setdefault(live.target, []),
            (-live.task.priority, next(self._order), live.task.id),
        )
        self._waiting.add(live.task.id)
        loop = asyncio.get_running_loop()
        live.timer = loop.call_later(
            max(0.0, live.task.deadline - self._clock()), self._expire_queued, live
        )

    def _expire_queued(self, live: _Live) -> None:
        live.timer = None
        if live.task.id in self._waiting:
            self._finish_soon(live, TaskState.TIMED_OUT, error=_timeout_error(live.task))

    def _drain(self, slot: AgentSlot) -> None:
        """Give a slot that has room the best queued tasks it can run."""
        keys = [(True, slot.id), *((False, c.name) for c in slot.descriptor.capabilities)]
        skipped: list[tuple[tuple[bool, str], tuple[int, int, str]]] = []
        while slot.available:
            best: tuple[bool, str] | None = None
            for key in keys:
                heap = self._queues.get(key)
                while heap and heap[0][2] not in self._waiting:
                    heapq.heappop(heap)  # stale: cancelled or timed out
                if heap and (best is None or heap[0] < self._queues[best][0]):
                    best = key
            if best is None:
                break
            entry = heapq.heappop(self._queues[best])
            live = self._live[entry[2]]
            if slot.id in live.task.chain:  # that task may not call back into this agent
                skipped.append((best, entry))
                continue
            self._unqueue(live)
            self._start(live, slot)
        for key, entry in skipped:
            heapq.heappush(self._queues[key], entry)

    def _unqueue(self, live: _Live) -> None:
        self._waiting.discard(live.task.id)
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None

    def _start(self, live: _Live, slot: AgentSlot) -> None:
        self._claim(live, slot, self._clock())
        self._record(live, "task.started")
        self._launch(live, slot)

    def _claim(self, live: _Live, slot: AgentSlot, now: float) -> None:
        """Mark the task RUNNING on ``slot`` and take its room (not yet recorded)."""
        live.task = live.task.evolve(
            state=TaskState.RUNNING,
            attempts=live.task.attempts + 1,
            agent_id=slot.id,
            started_at=now,
            updated_at=now,
        )
        slot.in_flight += 1

    def _launch(self, live: _Live, slot: AgentSlot) -> None:
        """Run a task marked RUNNING on ``slot`` (its in-flight count taken)."""
        slot.requests += 1
        live.runner = asyncio.create_task(self._run(live, slot), name=f"task:{live.task.id}")

    def _run_started(self, task: Task, slot: AgentSlot) -> None:
        """Run a task stored RUNNING on ``slot`` by the commit that made it ours
        (queued execution; the slot's in-flight count is taken)."""
        live = _Live(task)
        self._live[task.id] = live
        self._launch(live, slot)

    # --- running --------------------------------------------------------------------

    async def _run(self, live: _Live, slot: AgentSlot) -> None:
        started = time.perf_counter()
        try:
            outcome, result_json = await self._attempt(live, slot)
        finally:
            live.inner = None
            live.runner = None
            slot.in_flight -= 1
            elapsed = (time.perf_counter() - started) * 1000
            slot.latency.record(elapsed)
        state, result, error = outcome
        if state is TaskState.SUCCEEDED:
            slot.breaker.record_success()
        elif (
            state in (TaskState.FAILED, TaskState.TIMED_OUT)
            and error is not None
            and error.reason != "AGENT_DISCONNECTED"
            and not error.reason.startswith("CALL_")  # the callee's fault, not this agent's
        ):
            slot.errors += 1
            slot.breaker.record_failure()
        if not self._stopping:
            self._drain(slot)
        if live.cancel_requested:
            state, result, error = TaskState.CANCELLED, None, TaskError("CANCELLED", "cancelled")
        if state is TaskState.FAILED and error is not None and self._should_retry(live, error):
            self._retry_later(live, error)
            return
        await self._finish(live, state, result=result, error=error, result_json=result_json)

    async def _attempt(self, live: _Live, slot: AgentSlot) -> tuple[_Outcome, str | None]:
        """Run the agent once under the task deadline: (outcome, result as JSON)."""
        task = live.task
        remaining = task.deadline - self._clock()
        if remaining <= 0:
            return (TaskState.TIMED_OUT, None, _timeout_error(task)), None
        # The agent's first step runs right here: an agent that answers
        # without waiting (echo) needs no task of its own, nor a wait.
        coro = slot.runner.run(_Context(self, live, slot.id), task.capability, task.input)
        if type(coro) is not types.CoroutineType:
            inner: asyncio.Future[Any] = asyncio.ensure_future(coro)
        else:
            try:
                step = coro.send(None)
            except StopIteration as stop:
                return self._result(stop.value)
            except asyncio.CancelledError:
                return (TaskState.CANCELLED, None, TaskError("CANCELLED", "cancelled")), None
            except Exception as exc:
                return (TaskState.FAILED, None, self._task_error(exc, live)), None
            inner = asyncio.ensure_future(_continue(coro, step))
        live.inner = inner
        try:
            done, _ = await asyncio.wait({inner}, timeout=remaining)
        except asyncio.CancelledError:  # shutdown: stop() hands the task back
            inner.cancel()
            with contextlib.suppress(BaseException):
                await inner
            raise
        if not done:
            inner.cancel()
            with contextlib.suppress(BaseException):
                await inner
            return (TaskState.TIMED_OUT, None, _timeout_error(task)), None
        if inner.cancelled():
            return (TaskState.CANCELLED, None, TaskError("CANCELLED", "cancelled")), None
        if (failure := inner.exception()) is not None:
            return (TaskState.FAILED, None, self._task_error(failure, live)), None
        return self._result(inner.result())

    def _result(self, value: Any) -> tuple[_Outcome, str | None]:
        """The outcome of a returned value, and the value as JSON."""
        try:
            encoded = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            error = TaskError("BAD_RESULT", f"result is not JSON: {exc}")
            return (TaskState.FAILED, None, error), None
        return (TaskState.SUCCEEDED, value, None), encoded

    def _task_error(self, exc: BaseException, live: _Live) -> TaskError:
        if isinstance(exc, AgentError):
            return TaskError(exc.reason, str(exc), exc.retryable)
        if isinstance(exc, DataMCPError):
            return TaskError(exc.reason, exc.message, isinstance(exc, Unavailable))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return TaskError("AGENT_UNAVAILABLE", f"{type(exc).__name__}: {exc}", True)
        log.warning(
            "agent raised",
            extra={"task_id": live.task.id, "agent_id": live.task.agent_id},
            exc_info=exc,
        )
        return TaskError("AGENT_ERROR", f"{type(exc).__name__}: {exc}")

    def _should_retry(self, live: _Live, error: TaskError) -> bool:
        if self._stopping or not error.retryable:
            return False
        if error.reason == "AGENT_DISCONNECTED":
            return self.policy.remote_disconnect == "requeue"
        return live.task.attempts < live.task.max_attempts

    def _retry_later(self, live: _Live, error: TaskError) -> None:
        delay = (
            0.0 if error.reason == "AGENT_DISCONNECTED" else self._retry.delay(live.task.attempts)
        )
        if self._clock() + delay >= live.task.deadline:
            self._finish_soon(live, TaskState.TIMED_OUT, error=_timeout_error(live.task))
            return
        live.task = live.task.evolve(state=TaskState.QUEUED, error=error, updated_at=self._clock())
        self._record(live, "task.retrying")
        self._delayed += 1
        asyncio.get_running_loop().call_later(delay, self._requeue, live)

    def _requeue(self, live: _Live) -> None:
        self._delayed -= 1
        if self._live.get(live.task.id) is live and live.task.state is TaskState.QUEUED:
            self._place(live)

    def _finish_soon(
        self, live: _Live, state: TaskState, *, result: Any = None, error: TaskError | None = None
    ) -> None:
        live.runner = asyncio.create_task(self._finish(live, state, result=result, error=error))

    async def _finish(
        self,
        live: _Live,
        state: TaskState,
        *,
        result: Any = None,
        error: TaskError | None = None,
        result_json: str | None = None,
    ) -> None:
        if live.task.state.final:
            return
        self._unqueue(live)
        now = self._clock()
        live.task = live.task.evolve(
            state=state,
            result=result,
            result_json=result_json if result is not None else None,
            error=error,
            ended_at=now,
            updated_at=now,
        )
        task = live.task
        for attempt in range(1, FINAL_WRITE_ATTEMPTS + 1):
            try:
                await self._bus.publish(
                    [self._event(task, state.event_type)], [Write(self._save, task)]
                )
                break
            except Unavailable:
                if attempt == FINAL_WRITE_ATTEMPTS or self._stopping:
                    log.error("task final state not stored", extra={"task_id": task.id})
                    break
                await asyncio.sleep(self._retry.delay(attempt))
        if state is TaskState.SUCCEEDED:
            self.completed += 1
        else:
            self.failed += 1
        if self._live.get(task.id) is live:
            del self._live[task.id]
        live.runner = None
        live.done.set()
        self._notify(live)

    # --- recording ------------------------------------------------------------------

    def _record(self, live: _Live, event_type: str | None, suffix: str = "") -> None:
        """Store the task's current state (and its event) with the next commit,
        without waiting; watchers hear of it now."""
        events = [self._event(live.task, event_type, suffix)] if event_type else []
        future = asyncio.ensure_future(self._bus.publish(events, [Write(self._save, live.task)]))
        future.add_done_callback(_log_failure)
        self._notify(live)

    def _notify(self, live: _Live) -> None:
        for queue in live.watchers:
            queue.put_nowait(live.task)

    def _progress(self, live: _Live, percent: float, message: str) -> None:
        if live.task.state is not TaskState.RUNNING:
            return
        now = self._clock()
        live.task = live.task.evolve(
            progress=max(0.0, min(100.0, float(percent))),
            progress_message=message[:1024],
            updated_at=now,
        )
        if now - live.progress_at < PROGRESS_INTERVAL and percent < 100:
            self._notify(live)
            return
        live.progress_at = now
        live.progress_count += 1
        self._record(live, "task.progress", f":{live.task.attempts}:{live.progress_count}")

    def _event(
        self, task: Task, event_type: str, suffix: str = "", *, now: float | None = None
    ) -> Event:
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
        me = self._instance.id
        await tx.tasks.insert([(task, me) for task in tasks])

    # --- queries and control ---------------------------------------------------------

    async def get(self, tenant: str, task_id: str) -> Task:
        live = self._live.get(task_id)
        if live is not None and live.task.tenant == tenant:
            return live.task
        async with self._uow() as tx:
            task = await tx.tasks.get(tenant, task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}", reason="TASK_NOT_FOUND")
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
        return [self._fresher(t) for t in tasks], token

    def _fresher(self, task: Task) -> Task:
        live = self._live.get(task.id)
        return live.task if live is not None else task

    async def wait(self, tenant: str, task_id: str, within: float | None = None) -> Task:
        """The task once final (or as it is when ``within`` seconds pass)."""
        live = self._live.get(task_id)
        if live is None or live.task.tenant != tenant:
            return await self.get(tenant, task_id)
        if not live.done.is_set():
            # asyncio.timeout, not wait_for: no extra task per waiting call.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await live.done.wait()
        return live.task

    async def execute(
        self, tenant: str, spec: TaskSpec, *, wait_limit: float | None = None
    ) -> Task:
        """Submit and wait for the final state (within ``wait_limit``).

        Raises:
            Unavailable: the task could not be stored.
        """
        task, duplicate = await self.submit(tenant, spec, wait_limit=wait_limit, wait_stored=False)
        live = None if duplicate else self._live.get(task.id)
        final = await self.wait(tenant, task.id, wait_limit)
        if live is not None and live.stored is not None:
            await live.stored  # its failure is the caller's answer
        return final

    async def cancel(self, tenant: str, task_id: str) -> Task:
        """Cancel a task; a running agent has its work cancelled.

        Raises:
            NotFound: no such task for this tenant.
            FailedPrecondition: the task already finished.
        """
        live = self._live.get(task_id)
        if live is None or live.task.tenant != tenant:
            task = await self.get(tenant, task_id)
            if task.state.final:
                raise FailedPrecondition(
                    f"task {task_id} already ended {task.state.name}", reason="TASK_FINISHED"
                )
            # Owned by another replica (or about to be adopted): record the
            # cancellation; the owner sees it when it next writes.
            cancelled = task.evolve(
                state=TaskState.CANCELLED,
                error=TaskError("CANCELLED", "cancelled"),
                ended_at=self._clock(),
                updated_at=self._clock(),
            )
            await self._bus.publish(
                [self._event(cancelled, "task.cancelled")], [Write(self._save, cancelled)]
            )
            return cancelled
        if live.task.state.final:
            raise FailedPrecondition(f"task {task_id} already ended", reason="TASK_FINISHED")
        live.cancel_requested = True
        if live.inner is not None:
            live.inner.cancel()
        else:
            if live.timer is not None:
                live.timer.cancel()
            error = TaskError("CANCELLED", "cancelled")
            await self._finish(live, TaskState.CANCELLED, error=error)
        await live.done.wait()
        return live.task

    async def watch(self, tenant: str, task_id: str) -> AsyncIterator[Task]:
        """The task now, then on every change until it is final."""
        live = self._live.get(task_id)
        if live is None or live.task.tenant != tenant:
            task = await self.get(tenant, task_id)
            yield task
            # Owned by another replica: follow it through the store.
            while not task.state.final:
                await asyncio.sleep(0.5)
                task = await self.get(tenant, task_id)
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

    def uow(self) -> UnitOfWork:
        return self._uow()

    async def record_audit(self, record: AuditRecord) -> None:
        """Store an agent-to-agent call record (with the next group commit)."""
        await self._bus.publish([], [Write(self._audit, record)])

    # --- introspection ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiting) + self._delayed

    @property
    def running(self) -> int:
        return sum(s.in_flight for s in self.registry.all())

    def metrics(self) -> dict[str, float]:
        values = {
            "tasks_live": float(len(self._live)),
            "tasks_queued": float(self.queued),
            "tasks_running": float(self.running),
            "tasks_completed": float(self.completed),
            "tasks_failed": float(self.failed),
        }
        for slot in self.registry.all():
            values[f"agent_{slot.id}_requests"] = float(slot.requests)
            values[f"agent_{slot.id}_errors"] = float(slot.errors)
            values[f"agent_{slot.id}_load"] = float(slot.in_flight)
        return values


class _Resume:
    """Awaiting this continues a coroutine whose first step already ran
    (it stopped at ``pending``), so a task can take over from there."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                yield pending
            except BaseException as exc:  # cancellation: the agent decides
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            return (yield from coro.__await__())


async def _continue(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Resume(coro, pending)


def _timeout_error(task: Task) -> TaskError:
    return TaskError("TIMEOUT", f"task did not finish within {task.timeout:.3f}s", False)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("task state write failed", exc_info=exc)


async def _apply_save(tx: UnitOfWork, tasks: Sequence[Task]) -> None:
    latest: dict[str, Task] = {}
    for task in tasks:  # one row per task: the last state written wins
        latest.pop(task.id, None)
        latest[task.id] = task
    await tx.tasks.save(list(latest.values()))


async def _apply_audit(tx: UnitOfWork, records: Sequence[AuditRecord]) -> None:
    await tx.audit.add(records)
