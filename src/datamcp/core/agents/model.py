"""Tasks: what was asked, where it is in its lifecycle, and how it ended.

PENDING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMED_OUT.
A retryable failure takes a RUNNING task back to QUEUED (attempts counts
the runs). Audit records describe agent-to-agent calls.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

#: Task ids derived from a client request id live in their own UUID namespace.
_REQUEST_NS = uuid.UUID("6c1d3f58-8d0e-4f57-9a51-2f7b3c1f0a10")


class TaskState(enum.IntEnum):
    # Values match datamcp.v1.TaskState.
    PENDING = 1
    QUEUED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    TIMED_OUT = 7

    @property
    def final(self) -> bool:
        return self >= TaskState.SUCCEEDED

    @property
    def event_type(self) -> str:
        """The bus event announcing this final state (docs/events.md)."""
        return _FINAL_EVENT_TYPES[self]


_FINAL_EVENT_TYPES = {
    TaskState.SUCCEEDED: "task.succeeded",
    TaskState.FAILED: "task.failed",
    TaskState.CANCELLED: "task.cancelled",
    TaskState.TIMED_OUT: "task.timed_out",
}


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task as a client describes it, before validation."""

    capability: str = ""
    agent_id: str = ""
    input: Any = None
    priority: int = 0
    timeout: float | None = None
    request_id: str = ""
    max_attempts: int = 0
    correlation_id: str = ""


@dataclass(frozen=True, slots=True)
class TaskError:
    reason: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    tenant: str
    capability: str
    agent_id: str
    input: Any
    priority: int
    deadline: float
    timeout: float
    request_id: str
    state: TaskState
    attempts: int
    max_attempts: int
    correlation_id: str
    created_at: float
    updated_at: float
    parent_task_id: str = ""
    depth: int = 0
    #: Submitted for one agent (``agent_id``), not routed by capability.
    pinned: bool = False
    progress: float = 0.0
    progress_message: str = ""
    result: Any = None
    error: TaskError | None = None
    started_at: float | None = None
    ended_at: float | None = None
    #: Agent ids of the calling chain (cycle detection); not stored.
    chain: tuple[str, ...] = field(default=(), compare=False)

    def evolve(self, **changes: Any) -> Task:
        return replace(self, **changes)


def task_id_for(tenant: str, request_id: str) -> str:
    """The id of a task submitted with ``request_id``: the same submission
    always maps to the same id, so a retry across processes cannot create a
    second task."""
    if not request_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_REQUEST_NS, f"{tenant}\x00{request_id}"))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: str
    tenant: str
    source_agent_id: str
    target: str
    target_agent_id: str
    correlation_id: str
    task_id: str
    parent_task_id: str
    depth: int
    outcome: str
    error: str
    started_at: float
    duration: float
