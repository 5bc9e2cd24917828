"""Tasks: what was asked, where it is in its lifecycle, and how it ended.

PENDING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMED_OUT.
A retryable failure takes a RUNNING task back to QUEUED (attempts counts
the runs). Audit records describe agent-to-agent calls.
"""

from __future__ import annotations

import enum
import os
import uuid
from dataclasses import dataclass, field, fields
from operator import attrgetter
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


#: Longest capability name or agent id, and longest request or correlation id.
MAX_NAME, MAX_ID = 256, 128


def text_problem(value: str, limit: int) -> str | None:
    """What is wrong with an identifier a caller sent, or None."""
    if len(value) > limit:
        return f"at most {limit} characters"
    if not value.isprintable():
        return "printable characters only (no control characters)"
    return None


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
    #: The caller's input was at fault (``TaskRefused``), not the agent: it
    #: does not count against the agent's health. Not stored.
    caller_fault: bool = field(default=False, compare=False)


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
    #: A cancel was requested (possibly on another replica); the owner ends it.
    cancel_requested: bool = False
    #: Agent ids of the calling chain (cycle detection); not stored.
    chain: tuple[str, ...] = field(default=(), compare=False)
    #: ``input`` / ``result`` as compact JSON once someone has encoded them
    #: (validation does), so the row is not encoded again; not compared.
    input_json: str | None = field(default=None, compare=False, repr=False)
    result_json: str | None = field(default=None, compare=False, repr=False)

    def evolve(self, **changes: Any) -> Task:
        """A copy with ``changes`` (``dataclasses.replace`` without its checks:
        half the cost, on every state change of every task)."""
        out = _new(Task)
        for name, value in zip(_TASK_FIELDS, _task_values(self), strict=True):
            _set(out, name, value)
        for name, value in changes.items():
            _set(out, name, value)  # slots: an unknown name raises AttributeError
        return out


_TASK_FIELDS = tuple(f.name for f in fields(Task))
_task_values = attrgetter(*_TASK_FIELDS)
_new = object.__new__
_set = object.__setattr__


def task_id_for(tenant: str, request_id: str) -> str:
    """The id of a task submitted with ``request_id``: the same submission
    always maps to the same id, so a retry across processes cannot create a
    second task."""
    if not request_id:
        return _uuid4()
    return str(uuid.uuid5(_REQUEST_NS, f"{tenant}\x00{request_id}"))


class _Random:
    """Random bytes from ``os.urandom`` 8 KiB at a time: each call releases
    the GIL, and under load getting it back costs far more than the call."""

    def __init__(self) -> None:
        self.buffer = b""
        self.at = 0

    def take16(self) -> bytes:
        if self.at >= len(self.buffer):
            self.buffer, self.at = os.urandom(8192), 0
        self.at += 16
        return self.buffer[self.at - 16 : self.at]

    def reset(self) -> None:
        self.buffer, self.at = b"", 0


_random = _Random()
# A forked child must not hand out the ids its parent will.
os.register_at_fork(after_in_child=_random.reset)


def _uuid4() -> str:
    """``str(uuid.uuid4())``, without the UUID object and mostly without a system call."""
    raw = bytearray(_random.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
