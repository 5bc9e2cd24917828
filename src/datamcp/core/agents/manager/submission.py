"""Submission: checking a task before it is stored, building it, and
storing and placing it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datamcp.core.agents.agent import Capability
from datamcp.core.agents.manager.live import LiveTask, LiveTasks
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.policy import MAX_PRIORITY, MIN_PRIORITY, TaskPolicy
from datamcp.core.agents.manager.pool import TaskPool
from datamcp.core.agents.manager.queries import TaskQueries
from datamcp.core.agents.manager.recording import TaskRecorder, log_failure
from datamcp.core.agents.manager.running import TaskRunner
from datamcp.core.agents.model import (
    MAX_ID,
    MAX_NAME,
    Task,
    TaskSpec,
    TaskState,
    task_id_for,
    text_problem,
)
from datamcp.core.agents.registry import AgentRegistry, AgentSlot
from datamcp.core.agents.schema import SchemaCache
from datamcp.core.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    clip,
)
from datamcp.core.events.model import Event


@dataclass(frozen=True, slots=True)
class Checked:
    """A spec that passed :meth:`TaskValidator.check`."""

    timeout: float
    #: The capability to run (filled in for a task pinned to a one-capability agent).
    capability: str
    #: The input as compact JSON (stored as is).
    input_json: str | None


def _plain(spec: TaskSpec) -> bool:
    """Whether the names to route by are worth looking up at all."""
    return (
        text_problem(spec.capability, MAX_NAME) is None
        and text_problem(spec.agent_id, MAX_NAME) is None
    )


class TaskValidator:
    """Checks specs against the policy and the agents a tenant may use, and
    builds tasks from them."""

    def __init__(
        self,
        registry: AgentRegistry,
        schemas: SchemaCache,
        policy: TaskPolicy,
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._schemas = schemas
        self._policy = policy
        self._clock = clock

    def check(self, tenant: str, spec: TaskSpec, wait_limit: float | None = None) -> Checked:
        """Check everything before storing.

        ``wait_limit`` is how long the caller will wait (a call deadline): the
        task's timeout defaults to it and never exceeds it.

        Raises:
            InvalidArgument: unknown capability or agent (for this tenant),
                input against the schema or too large, timeout out of range,
                bad priority, request id or attempts.
        """
        p = self._policy
        bad: list[FieldViolation] = []
        capability, cap = self._capability(tenant, spec, bad) if _plain(spec) else ("", None)
        if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
            bad.append(FieldViolation("task.priority", f"{MIN_PRIORITY} to {MAX_PRIORITY}"))
        for name, value, limit in (
            ("task.capability", spec.capability, MAX_NAME),
            ("task.agent_id", spec.agent_id, MAX_NAME),
            ("task.request_id", spec.request_id, MAX_ID),
            ("task.correlation_id", spec.correlation_id, MAX_ID),
        ):
            if (problem := text_problem(value, limit)) is not None:
                bad.append(FieldViolation(name, problem))
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
        return Checked(timeout, capability, input_json)

    def _capability(
        self, tenant: str, spec: TaskSpec, bad: list[FieldViolation]
    ) -> tuple[str, Capability | None]:
        """The capability to run and its declaration, as ``tenant`` sees the agents."""
        capability = spec.capability
        if spec.agent_id:  # pinned to one agent: it must offer the capability
            slot = self._registry.get(spec.agent_id, tenant)
            if slot is None:
                bad.append(FieldViolation("task.agent_id", f"no agent {clip(spec.agent_id)!r}"))
                return capability, None
            offered = slot.descriptor.capabilities
            if not capability and len(offered) == 1:
                capability = offered[0].name
            elif not capability:
                names = ", ".join(c.name for c in offered)
                bad.append(FieldViolation("task.capability", f"name one of: {names}"))
                return capability, None
            cap = slot.capability(capability)
            if cap is None:
                bad.append(
                    FieldViolation(
                        "task.capability",
                        f"agent {slot.id} does not offer {clip(capability)!r}",
                    )
                )
            return capability, cap
        if not capability:
            bad.append(FieldViolation("task.capability", "set a capability or an agent_id"))
            return capability, None
        cap = self._registry.capability(capability, tenant)
        if cap is None:
            known = sorted(
                {c.name for s in self._registry.visible(tenant) for c in s.descriptor.capabilities}
            )
            bad.append(
                FieldViolation(
                    "task.capability",
                    f"no agent offers {clip(capability)!r} (known: {', '.join(known) or 'none'})",
                )
            )
        return capability, cap

    def _input_json(self, value: Any, bad: list[FieldViolation]) -> str | None:
        """The input as compact JSON, or None with a violation."""
        try:
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            bad.append(FieldViolation("task.input", "must be JSON (no NaN or Infinity)"))
            return None
        size = len(encoded)  # ASCII: json.dumps escapes everything else
        limit = self._policy.max_input_bytes
        if size > limit:
            bad.append(FieldViolation("task.input", f"{size} bytes is over the {limit}-byte limit"))
        return encoded

    def new_task(
        self,
        tenant: str,
        spec: TaskSpec,
        checked: Checked,
        *,
        task_id: str,
        now: float,
        parent: Task | None = None,
        chain: tuple[str, ...] = (),
        depth: int = 0,
    ) -> Task:
        """A PENDING task for a checked spec."""
        timeout = checked.timeout
        return Task(
            id=task_id,
            tenant=tenant,
            capability=checked.capability,
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
            max_attempts=spec.max_attempts or self._policy.max_attempts,
            correlation_id=spec.correlation_id
            or (parent.correlation_id if parent else "")
            or task_id,
            created_at=now,
            updated_at=now,
            parent_task_id=parent.id if parent else "",
            depth=depth,
            chain=chain,
            input_json=checked.input_json,
        )


class Submission:
    """Submitting a task to run in this process: check, store, place."""

    def __init__(
        self,
        *,
        validator: TaskValidator,
        live: LiveTasks,
        placement: Placement,
        runner: TaskRunner,
        queries: TaskQueries,
        recorder: TaskRecorder,
        pool: TaskPool,
        policy: TaskPolicy,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._validator = validator
        self._live = live
        self._placement = placement
        self._runner = runner
        self._queries = queries
        self._recorder = recorder
        self._policy = policy
        self._clock = clock

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
        """Check and store a task, then place it. Returns (task, duplicate).

        The task is placed before it is stored, and stored as placed: one
        insert (RUNNING or QUEUED) and one commit carry ``task.submitted``
        and, when an agent is free, ``task.started``. With ``wait_stored``
        False the task starts while its insert is on the way to the store
        (it lands in the next group commit, before any later state of the
        task); a caller that waits for the result this way saves one commit
        round trip and learns of a store failure from ``live.stored``.

        Raises:
            InvalidArgument: see :meth:`TaskValidator.check`.
            ResourceExhausted: the queue is full.
            Unavailable: the store cannot be written.
        """
        now = self._clock()
        checked = self._validator.check(tenant, spec, wait_limit)
        task_id = task_id_for(tenant, spec.request_id)
        known = self._live.of(tenant, task_id)
        if known is not None:
            return known.task, True
        if spec.request_id and (stored := await self._queries.stored(tenant, task_id)):
            return stored, True
        queued = self._placement.queued
        if queued >= self._policy.queue_size:
            raise ResourceExhausted(
                f"the task queue is full ({queued} waiting); retry later",
                retry_after=1.0,
                subject=tenant,
                quota="agents.queue_size",
                reason="QUEUE_FULL",
            )
        task = self._validator.new_task(
            tenant, spec, checked, task_id=task_id, now=now, parent=parent, chain=chain, depth=depth
        )
        live = self._live.add(task)
        events = [self._recorder.event(task, "task.submitted", now=now)]
        slot = self._placement.select(live)
        if slot is None and self._pool.takes(task):
            self._live.forget(live)
            return await self._to_pool(task.evolve(state=TaskState.QUEUED), events)
        if slot is not None:
            self._placement.claim(live, slot, now)
            events.append(self._recorder.event(live.task, "task.started", now=now))
        else:
            live.task = task.evolve(state=TaskState.QUEUED)
        insert = self._recorder.publish(events, [self._recorder.insert(live.task)])
        if not wait_stored:
            live.stored = asyncio.ensure_future(insert)
            live.stored.add_done_callback(log_failure)
            self._placed(live, slot)
            return live.task, False
        try:
            result = (await insert)[0]
        except BaseException:
            self._unclaim(live, slot)
            raise
        if result.duplicate:  # another replica stored it first
            self._unclaim(live, slot)
            stored = await self._queries.stored(tenant, task_id)
            if stored is None:
                raise Unavailable("task submission raced with a delete; retry")
            return stored, True
        self._placed(live, slot)
        return live.task, False

    async def _to_pool(self, task: Task, events: list[Event]) -> tuple[Task, bool]:
        """Store a task no agent here has room for in the shared pool, where
        any process with room claims it."""
        result = (await self._recorder.publish(events, [self._recorder.pooled(task)]))[0]
        if result.duplicate:  # another replica stored it first
            stored = await self._queries.stored(task.tenant, task.id)
            if stored is None:
                raise Unavailable("task submission raced with a delete; retry")
            return stored, True
        self._pool.pooled(task)
        return task, False

    def _placed(self, live: LiveTask, slot: AgentSlot | None) -> None:
        """Run a new task on the slot it claimed, or queue it (already QUEUED)."""
        if live.task.state.final:  # cancelled while its insert was on the way
            if slot is not None:
                self._placement.release(slot)
            return
        if slot is not None:
            live.notify()
            self._runner.launch(live, slot)
        else:
            self._placement.enqueue(live)

    def _unclaim(self, live: LiveTask, slot: AgentSlot | None) -> None:
        """Undo a submission that was not stored: forget it, free its slot."""
        self._live.forget(live)
        if slot is not None:
            self._placement.release(slot, drain=not self._runner.stopping)
