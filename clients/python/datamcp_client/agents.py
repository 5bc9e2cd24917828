"""``client.agents``: tasks and the agents that run them (AgentService).

Example:
    task = await client.agents.execute("echo", {"a": 1})
    assert task.state is TaskState.SUCCEEDED and task.result == {"a": 1}
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from datamcp.v1 import agents_pb2, agents_pb2_grpc
from datamcp_client._rpc import (
    Connection,
    enum_value,
    fill_duration,
    paged,
    to_datetime,
)
from datamcp_client._values import JSON, fill_value, from_struct, from_value

# A call's deadline is the task's timeout plus this margin, so the server
# answers with the task TIMED_OUT rather than the call running out first.
_DEADLINE_MARGIN = 5.0


class TaskState(enum.Enum):
    """Where a task is in its lifecycle."""

    UNSPECIFIED = 0
    PENDING = 1
    QUEUED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    TIMED_OUT = 7

    @property
    def done(self) -> bool:
        """True for the final states."""
        return self.value >= TaskState.SUCCEEDED.value


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task failed."""

    reason: str
    message: str
    retryable: bool


_UNSET: Any = object()
_TIMES = ("create_time", "update_time", "start_time", "end_time", "deadline")


class Task:
    """A task as the server last reported it. ``input`` and ``result`` are plain JSON.

    A read-only view over the answer: fields are converted when first read
    (and kept), so a caller that only looks at ``state`` and ``result`` pays
    for nothing else.
    """

    __slots__ = ("_input", "_result", "_t")

    def __init__(self, proto: agents_pb2.Task) -> None:
        self._t = proto
        self._input: JSON = _UNSET
        self._result: JSON = _UNSET

    @classmethod
    def from_proto(cls, t: agents_pb2.Task) -> Task:
        return cls(t)

    def to_proto(self) -> agents_pb2.Task:
        return self._t

    @property
    def id(self) -> str:
        return self._t.id

    @property
    def capability(self) -> str:
        return self._t.capability

    @property
    def agent_id(self) -> str:
        return self._t.agent_id

    @property
    def state(self) -> TaskState:
        return _STATES[self._t.state]

    @property
    def done(self) -> bool:
        return self._t.state >= agents_pb2.TASK_STATE_SUCCEEDED

    @property
    def succeeded(self) -> bool:
        return self._t.state == agents_pb2.TASK_STATE_SUCCEEDED

    @property
    def input(self) -> JSON:
        if self._input is _UNSET:
            self._input = from_value(self._t.input)
        return self._input

    @property
    def result(self) -> JSON:
        """The result of a succeeded task (None otherwise)."""
        if self._result is _UNSET:
            t = self._t
            self._result = from_value(t.result) if t.HasField("result") else None
        return self._result

    @property
    def error(self) -> TaskError | None:
        if not self._t.HasField("error"):
            return None
        e = self._t.error
        return TaskError(e.reason, e.message, e.retryable)

    @property
    def priority(self) -> int:
        return self._t.priority

    @property
    def attempts(self) -> int:
        return self._t.attempts

    @property
    def max_attempts(self) -> int:
        return self._t.max_attempts

    @property
    def progress_percent(self) -> float:
        return self._t.progress.percent

    @property
    def progress_message(self) -> str:
        return self._t.progress.message

    @property
    def request_id(self) -> str:
        return self._t.request_id

    @property
    def correlation_id(self) -> str:
        return self._t.correlation_id

    @property
    def parent_task_id(self) -> str:
        return self._t.parent_task_id

    @property
    def tenant(self) -> str:
        return self._t.tenant

    @property
    def create_time(self) -> datetime | None:
        return to_datetime(self._t.create_time)

    @property
    def update_time(self) -> datetime | None:
        return to_datetime(self._t.update_time)

    @property
    def start_time(self) -> datetime | None:
        return to_datetime(self._t.start_time)

    @property
    def end_time(self) -> datetime | None:
        return to_datetime(self._t.end_time)

    @property
    def deadline(self) -> datetime | None:
        return to_datetime(self._t.deadline)

    FIELDS = (
        "id",
        "capability",
        "agent_id",
        "state",
        "input",
        "result",
        "error",
        "priority",
        "attempts",
        "max_attempts",
        "progress_percent",
        "progress_message",
        "request_id",
        "correlation_id",
        "parent_task_id",
        "tenant",
        *_TIMES,
    )
    """The attributes, in order (what ``to_dict`` and the CLI show)."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._t == self._t

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, capability={self.capability!r}, state={self.state.name})"


_STATES = {s.value: s for s in TaskState}


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    description: str
    input_schema: dict[str, JSON]


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent hosted by the server, with its live load."""

    id: str
    name: str
    kind: str
    description: str
    capabilities: tuple[Capability, ...]
    status: str
    load: int
    max_concurrency: int
    requests: int
    errors: int

    @classmethod
    def from_proto(cls, a: agents_pb2.Agent) -> Agent:
        return cls(
            id=a.id,
            name=a.name,
            kind=a.kind,
            description=a.description,
            capabilities=tuple(
                Capability(c.name, c.description, from_struct(c.input_schema))
                for c in a.capabilities
            ),
            status=agents_pb2.AgentStatus.Name(a.status).removeprefix("AGENT_STATUS_"),
            load=a.load,
            max_concurrency=a.max_concurrency,
            requests=a.stats.requests,
            errors=a.stats.errors,
        )


class AgentsClient:
    """Tasks and agents. Reached as ``client.agents``."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._stub = agents_pb2_grpc.AgentServiceStub(connection.channel)

    def _spec(
        self,
        capability: str,
        input: JSON,
        *,
        agent_id: str,
        timeout: float | None,
        priority: int,
        request_id: str | None,
        max_attempts: int,
        correlation_id: str,
    ) -> agents_pb2.TaskSpec:
        spec = agents_pb2.TaskSpec(
            capability=capability,
            agent_id=agent_id,
            priority=priority,
            # A request id makes the call safe to retry: the server answers
            # a repeated id with the task first stored.
            request_id=request_id or uuid.uuid4().hex,
            max_attempts=max_attempts,
            correlation_id=correlation_id,
        )
        fill_value(spec.input, input)
        if timeout is not None:
            fill_duration(spec.timeout, timeout)
        return spec

    async def execute(
        self,
        capability: str,
        input: JSON = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        priority: int = 0,
        request_id: str | None = None,
        max_attempts: int = 0,
        correlation_id: str = "",
    ) -> Task:
        """Run a task and wait for its final state.

        Args:
            capability: what to run, for example ``"echo"`` (or give ``agent_id``).
            input: the task's JSON input.
            agent_id: run on this agent instead of routing by capability.
            timeout: seconds the task may take (server default when None).
            priority: -100..100, higher first.
            request_id: idempotency key; generated when None, so a retried call
                never runs the task twice.
            max_attempts: attempts for retryable agent errors (0: server default).
            correlation_id: ties the task to other work (generated when empty).

        Returns:
            The task in its final state: check ``task.state`` (a failed task is
            not an exception; ``task.error`` says why).

        Raises:
            InvalidArgumentError: unknown capability, input against the schema...
            ResourceExhaustedError: the queue is full (after retries).
        """
        request = agents_pb2.ExecuteTaskRequest(
            task=self._spec(
                capability,
                input,
                agent_id=agent_id,
                timeout=timeout,
                priority=priority,
                request_id=request_id,
                max_attempts=max_attempts,
                correlation_id=correlation_id,
            )
        )
        deadline = None if timeout is None else timeout + _DEADLINE_MARGIN
        response = await self._conn.unary(
            self._stub.ExecuteTask, request, idempotent=True, timeout=deadline
        )
        return Task.from_proto(response.task)

    async def submit(
        self,
        capability: str,
        input: JSON = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        priority: int = 0,
        request_id: str | None = None,
        max_attempts: int = 0,
        correlation_id: str = "",
        queued: bool = False,
    ) -> Task:
        """Store a task and return at once; follow it with :meth:`wait` or :meth:`watch`.

        Same arguments as :meth:`execute`, plus ``queued`` (send it to the
        server's task queue, run by the Lambda tasks handler).
        """
        request = agents_pb2.SubmitTaskRequest(
            task=self._spec(
                capability,
                input,
                agent_id=agent_id,
                timeout=timeout,
                priority=priority,
                request_id=request_id,
                max_attempts=max_attempts,
                correlation_id=correlation_id,
            ),
            execution_mode=(
                agents_pb2.EXECUTION_MODE_QUEUED
                if queued
                else agents_pb2.EXECUTION_MODE_UNSPECIFIED
            ),
        )
        response = await self._conn.unary(self._stub.SubmitTask, request, idempotent=True)
        return Task.from_proto(response.task)

    async def get_task(self, task_id: str) -> Task:
        response = await self._conn.unary(
            self._stub.GetTask, agents_pb2.GetTaskRequest(id=task_id), idempotent=True
        )
        return Task.from_proto(response.task)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task (FailedPreconditionError when it has already ended)."""
        response = await self._conn.unary(
            self._stub.CancelTask, agents_pb2.CancelTaskRequest(id=task_id), idempotent=False
        )
        return Task.from_proto(response.task)

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """Yield the task on every change, ending after its final state."""
        call = self._stub.WatchTask(
            agents_pb2.WatchTaskRequest(id=task_id), metadata=self._conn.metadata
        )
        async for item in self._conn.stream(call):
            yield Task.from_proto(item.task)

    async def wait(self, task_id: str) -> Task:
        """The task once it has reached its final state."""
        last: Task | None = None
        async for last in self.watch(task_id):
            if last.done:
                return last
        return last if last is not None else await self.get_task(task_id)

    def tasks(
        self,
        *,
        states: Iterable[TaskState | str] = (),
        capability: str = "",
        correlation_id: str = "",
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Task]:
        """The tenant's tasks, newest first, page after page (up to ``limit``)."""
        wanted = [
            s.value
            if isinstance(s, TaskState)
            else enum_value(s, agents_pb2.TaskState, "TASK_STATE_")
            for s in states
        ]

        async def fetch(token: str) -> tuple[list[Task], str]:
            response = await self._conn.unary(
                self._stub.ListTasks,
                agents_pb2.ListTasksRequest(
                    states=wanted,  # type: ignore[arg-type]
                    capability=capability,
                    correlation_id=correlation_id,
                    page_size=page_size if limit is None else min(page_size, limit),
                    page_token=token,
                ),
                idempotent=True,
            )
            return [Task.from_proto(t) for t in response.tasks], response.next_page_token

        return paged(fetch, limit)

    async def list(self, capability: str = "") -> list[Agent]:
        """The agents hosted by the server (those with ``capability`` when given)."""
        response = await self._conn.unary(
            self._stub.ListAgents,
            agents_pb2.ListAgentsRequest(capability=capability),
            idempotent=True,
        )
        return [Agent.from_proto(a) for a in response.agents]

    async def get(self, agent_id: str) -> Agent:
        response = await self._conn.unary(
            self._stub.GetAgent, agents_pb2.GetAgentRequest(id=agent_id), idempotent=True
        )
        return Agent.from_proto(response.agent)
