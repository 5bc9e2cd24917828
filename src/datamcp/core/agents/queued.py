"""Queued execution: a task handed to a queue (SQS) and run by a consumer of
that queue (the Lambda tasks handler) instead of by the submitting process.

Who runs a task is recorded in its ``owner`` column:

- ``q:<digest of the task id>`` (:func:`queue_owner`): stored by a server in
  queued mode and not running anywhere. Orphan recovery leaves it alone, and
  because the owner is unique to the task, claiming it is one conditional
  UPDATE (``adopt``) that exactly one consumer wins, even when SQS delivers
  the message twice at the same time.
- an instance id: the process (server or Lambda container) running it. A
  consumer that gets a redelivered message for a task owned by an instance
  that is gone (a crashed invocation, a frozen container whose invocation
  ran out of time and handed its tasks back) takes the work over the way the
  servers' orphan recovery does; one owned by a live instance is busy.

Identity is the request id: a message's task id is always derived from
(tenant, request_id) (``task_id_for``), and a message without one gets
``sqs:<messageId>``, so a redelivered message maps to the same task and has
its effect once. The sender puts the message on the queue *before* storing
the task: a consumer that sees the message first stores the task itself (the
sender's insert then is a no-op), and a sender that dies in between leaves a
message that still runs rather than a stored task nobody will ever run.

Here: the message (``QueuedTask``), the queue's port and the owner names;
``manager.queued`` sends and runs queued tasks on the manager's parts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from datamcp.core.agents.model import TaskSpec, task_id_for
from datamcp.core.errors import FieldViolation, InvalidArgument

QUEUE_OWNER_PREFIX = "q:"
#: The owner a consumer inserts a task under, inside the commit that claims it
#: (never visible outside that transaction).
CLAIM_OWNER_PREFIX = "c:"
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FIELDS = frozenset(
    {
        "tenant",
        "capability",
        "agent_id",
        "input",
        "priority",
        "timeout",
        "request_id",
        "max_attempts",
        "correlation_id",
    }
)


def queue_owner(task_id: str) -> str:
    """The owner of a queued task nobody runs yet (fits the 32-character column)."""
    return QUEUE_OWNER_PREFIX + hashlib.sha256(task_id.encode()).hexdigest()[:30]


def is_queue_owner(owner: str) -> bool:
    return owner.startswith(QUEUE_OWNER_PREFIX)


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """One task submission as it travels through a queue."""

    tenant: str
    spec: TaskSpec

    @property
    def task_id(self) -> str:
        return task_id_for(self.tenant, self.spec.request_id)

    def to_message(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {
            "tenant": self.tenant,
            "capability": s.capability,
            "input": s.input,
            "request_id": s.request_id,
        }
        if s.agent_id:
            out["agent_id"] = s.agent_id
        if s.priority:
            out["priority"] = s.priority
        if s.timeout is not None:
            out["timeout"] = s.timeout
        if s.max_attempts:
            out["max_attempts"] = s.max_attempts
        if s.correlation_id:
            out["correlation_id"] = s.correlation_id
        return out

    @classmethod
    def from_message(cls, body: Any, message_id: str) -> QueuedTask:
        """Parse a message body (already decoded JSON).

        ``message_id`` names the submission when the body has no request id,
        so a redelivery of the same message is the same task.

        Raises:
            InvalidArgument: with a field violation per problem.
        """
        if not isinstance(body, Mapping):
            raise InvalidArgument(
                "a task message is a JSON object",
                [FieldViolation("body", "expected a JSON object")],
                reason="INVALID_TASK_MESSAGE",
            )
        bad = [FieldViolation(str(k), "unknown field") for k in body if k not in _FIELDS]

        def text(name: str, default: str = "") -> str:
            value = body.get(name, default)
            if not isinstance(value, str):
                bad.append(FieldViolation(name, "expected a string"))
                return default
            return value

        def whole(name: str) -> int:
            value = body.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                bad.append(FieldViolation(name, "expected a whole number"))
                return 0
            return value

        tenant = text("tenant", "default")
        if not TENANT_RE.match(tenant):
            bad.append(FieldViolation("tenant", "1-64 letters, digits, '.', '_' or '-'"))
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            bad.append(FieldViolation("timeout", "seconds, a number above 0"))
            timeout = None
        spec = TaskSpec(
            capability=text("capability"),
            agent_id=text("agent_id"),
            input=body.get("input"),
            priority=whole("priority"),
            timeout=float(timeout) if timeout is not None else None,
            request_id=text("request_id") or f"sqs:{message_id}",
            max_attempts=whole("max_attempts"),
            correlation_id=text("correlation_id"),
        )
        if bad:
            raise InvalidArgument(
                "invalid task message; nothing was stored", bad, reason="INVALID_TASK_MESSAGE"
            )
        return cls(tenant, spec)


class TaskQueue(Protocol):
    """Where queued tasks go (adapters: ``adapters/aws/task_queue.py``)."""

    name: str

    async def send(self, task: QueuedTask) -> None:
        """Enqueue durably. Raises Unavailable when the queue cannot take it."""
        ...

    async def close(self) -> None: ...
