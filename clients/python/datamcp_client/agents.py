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


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the server last reported it. ``input`` and ``result`` are plain JSON."""

    id: str
    capability: str
    agent_id: str
    state: TaskState
    input: JSON
    result: JSON
    error: TaskError | None
    priority: int
    attempts: int
    max_attempts: int
    progress_percent: float
    progress_message: str
    request_id: str
    correlation_id: str
    parent_task_id: str
    tenant: str
    create_time: datetime | None
    update_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    deadline: datetime | None

    @property
    def done(self) -> bool:
        return self.state.done

    @property
    def succeeded(self) -> bool:
        return self.state is TaskState.SUCCEEDED

    @classmethod
    def from_proto(cls, t: agents_pb2.Task) -> Task:
        error = t.error if t.HasField("error") else None
        return cls(
            id=t.id,
            capability=t.capability,
            agent_id=t.agent_id,
            state=_STATES[t.state],
            input=from_value(t.input),
            result=from_value(t.result) if t.HasField("result") else None,
            error=TaskError(error.reason, error.message, error.retryable) if error else None,
            priority=t.priority,
            attempts=t.attempts,
            max_attempts=t.max_attempts,
            progress_percent=t.progress.percent,
            progress_message=t.progress.message,
            request_id=t.request_id,
            correlation_id=t.correlation_id,
            parent_task_id=t.parent_task_id,
            tenant=t.tenant,
            create_time=to_datetime(t.create_time),
            update_time=to_datetime(t.update_time),
            start_time=to_datetime(t.start_time),
            end_time=to_datetime(t.end_time),
            deadline=to_datetime(t.deadline),
        )


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
