"""What an agent is, and what it sees while it runs a task.

An agent is a Python object with a name, capabilities and a ``run``
coroutine. Built-in agents, plugin agents (entry-point group
``datamcp.agents`` or ``agents.plugins`` in config) and remote agents
(connected over ``AgentService.Connect``) all look like this to the manager.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class Capability:
    """Something an agent can do. ``input_schema`` is a JSON Schema the task
    input is checked against before the task is stored (``None`` = any)."""

    name: str
    description: str = ""
    input_schema: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None


class AgentError(Exception):
    """An agent's way to fail a task with a stable reason.

    ``retryable`` says whether another attempt may succeed (a dependency was
    down, a rate limit hit); the manager retries only those, with backoff.
    Any other exception fails the task as ``AGENT_ERROR``, not retried.
    """

    def __init__(self, message: str, *, reason: str = "AGENT_ERROR", retryable: bool = False):
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class TaskRefused(AgentError):
    """The task asks for something the agent will not do: input it cannot
    use, a path, statement or URL it may not touch, a capability it lacks.

    The caller's fault, not the agent's: never retried, and never counted
    against the agent's health (its circuit breaker), so one caller's bad
    requests cannot take a shared agent offline for everyone else.
    """

    def __init__(self, message: str, *, reason: str = "INVALID_INPUT") -> None:
        super().__init__(message, reason=reason, retryable=False)


class TaskContext(Protocol):
    """What a running agent may use. Given to :meth:`Agent.run`."""

    @property
    def task_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def correlation_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def deadline(self) -> float:
        """Wall-clock time (epoch seconds) the task must finish by."""
        ...

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        ...

    async def progress(self, percent: float, message: str = "") -> None:
        """Report progress; watchers and the bus see it."""
        ...

    async def call(self, target: str, payload: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run a capability (or an agent, by id) as a child task and return its
        result. The correlation id goes along, the timeout is cut to what is
        left of this task's deadline, the call is audited, and chains that
        are too deep or come back to an agent already in the chain are
        refused.

        Raises:
            AgentError: the child failed, timed out or was refused; ``reason``
                says which (``CALL_FAILED``, ``CALL_TIMEOUT``, ``CALL_DEPTH``,
                ``CALL_CYCLE``, ``NO_AGENT``...).
        """
        ...


class Agent:
    """Base class for in-process agents (built-in and plugin).

    Subclasses set ``name``, ``description``, ``capabilities`` and override
    :meth:`run`. The constructor receives the agent's own config table
    (``[agents.<name>]``-style mapping; may be empty).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    capabilities: ClassVar[Sequence[Capability]] = ()
    max_concurrency: int = 16
    weight: int = 1
    kind: str = "builtin"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: Mapping[str, Any] = config or {}

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        """Do the work; return a JSON-serialisable result."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the agent holds (pools, clients). Called at shutdown."""


@dataclass(frozen=True, slots=True)
class AgentDescriptor:
    """The manager's view of an agent, for listings."""

    id: str
    name: str
    description: str
    kind: str
    capabilities: tuple[Capability, ...]
    max_concurrency: int
    weight: int = 1
    extra: Mapping[str, str] = field(default_factory=dict)
    #: The tenants this agent may serve; ``None``: every tenant (built-in,
    #: plugin and configured agents). A remote agent serves the tenant that
    #: connected it, plus those an operator granted (``agents.grants``).
    tenants: frozenset[str] | None = None

    def serves(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


class AgentGone(AgentError):
    """The agent running a task went away (a remote agent disconnected).
    The manager re-queues or fails the task by ``agents.remote_disconnect``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="AGENT_DISCONNECTED", retryable=True)
