"""Remote agents: a process in any language that connects over a stream.

A remote agent belongs to the tenant whose credentials connected it: only
that tenant sees it and only that tenant's tasks go to it, unless an
operator granted it to more tenants (``agents.grants``). The capability
names of the shared in-process agents (built-in, plugin, configured) are
reserved, and so are the built-in namespaces (``core/agents/builtin``): a
remote agent may not offer them.

The entry point (``AgentService.Connect``) turns stream messages into calls
on a :class:`RemoteAgent` and sends what its ``outbox`` yields. To the
manager a remote agent is a runner like any other: ``run`` sends an
assignment and waits for the result, a cancelled run sends a cancel, and a
disconnect ends every pending run with :class:`AgentGone` (re-queued or
failed by ``agents.remote_disconnect``).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datamcp.core.agents.agent import (
    CAPABILITY_RE,
    AgentDescriptor,
    AgentError,
    AgentGone,
    Capability,
    TaskContext,
)
from datamcp.core.agents.builtin import is_builtin_capability
from datamcp.core.agents.manager import AgentManager
from datamcp.core.errors import FieldViolation, InvalidArgument

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_CONCURRENCY = 1000
MAX_CAPABILITY = 128
MAX_CAPABILITIES = 100
MAX_DESCRIPTION = 1000


@dataclass(frozen=True, slots=True)
class Hello:
    name: str
    description: str
    capabilities: Sequence[Capability]
    max_concurrency: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Assignment:
    task_id: str
    capability: str
    input: Any
    deadline: float
    attempt: int
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    task_id: str


class RemoteAgent:
    """The server side of one connected remote agent."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.outbox: asyncio.Queue[Assignment | Cancel | None] = asyncio.Queue()
        self._pending: dict[str, tuple[asyncio.Future[Any], TaskContext]] = {}
        self.closed = False
        self.last_seen = time.monotonic()

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if self.closed:
            raise AgentGone(f"remote agent {self.agent_id} disconnected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ctx.task_id] = (future, ctx)
        self.outbox.put_nowait(
            Assignment(
                ctx.task_id, capability, payload, ctx.deadline, ctx.attempt, ctx.correlation_id
            )
        )
        try:
            return await future
        except asyncio.CancelledError:
            if not self.closed:
                self.outbox.put_nowait(Cancel(ctx.task_id))
            raise
        finally:
            self._pending.pop(ctx.task_id, None)

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    async def progress(self, task_id: str, percent: float, message: str) -> None:
        pending = self._pending.get(task_id)
        if pending is not None:
            await pending[1].progress(percent, message)

    def result(self, task_id: str, output: Any) -> None:
        pending = self._pending.get(task_id)
        if pending is not None and not pending[0].done():
            pending[0].set_result(output)

    def failure(self, task_id: str, reason: str, message: str, retryable: bool) -> None:
        pending = self._pending.get(task_id)
        if pending is not None and not pending[0].done():
            pending[0].set_exception(
                AgentError(message or reason, reason=reason or "AGENT_ERROR", retryable=retryable)
            )

    def close(self) -> None:
        """The stream ended: every task in flight gets :class:`AgentGone`."""
        self.closed = True
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(AgentGone(f"remote agent {self.agent_id} disconnected"))
        self.outbox.put_nowait(None)


@dataclass(frozen=True, slots=True)
class Grant:
    """Remote agents named ``agent`` connected by tenant ``owner`` also serve
    ``tenants`` (``*``: every tenant)."""

    agent: str
    owner: str
    tenants: frozenset[str]


class RemoteHub:
    """Registers remote agents with the manager and removes them on disconnect."""

    def __init__(
        self, manager: AgentManager, heartbeat_interval: float, grants: Sequence[Grant] = ()
    ) -> None:
        self._manager = manager
        self.heartbeat_interval = heartbeat_interval
        self._grants = tuple(grants)

    def connect(self, hello: Hello, tenant: str) -> RemoteAgent:
        """Validate the announcement and host the agent for ``tenant``.

        Raises:
            InvalidArgument: bad name, capabilities (a reserved name among
                them), schema or concurrency.
        """
        bad: list[FieldViolation] = []
        reserved = self._manager.registry.shared_capabilities()
        if not NAME_RE.match(hello.name):
            bad.append(FieldViolation("hello.name", "1-64 letters, digits, '_', '.', '-'"))
        if not 1 <= len(hello.capabilities) <= MAX_CAPABILITIES:
            bad.append(FieldViolation("hello.capabilities", f"1 to {MAX_CAPABILITIES}"))
        if len(hello.description) > MAX_DESCRIPTION:
            bad.append(FieldViolation("hello.description", f"at most {MAX_DESCRIPTION} characters"))
        for i, cap in enumerate(hello.capabilities[:MAX_CAPABILITIES]):
            if not CAPABILITY_RE.match(cap.name) or len(cap.name) > MAX_CAPABILITY:
                bad.append(
                    FieldViolation(
                        f"hello.capabilities[{i}].name",
                        f"lower-case dotted words, at most {MAX_CAPABILITY} characters",
                    )
                )
            elif cap.name in reserved or is_builtin_capability(cap.name):
                bad.append(
                    FieldViolation(
                        f"hello.capabilities[{i}].name",
                        f"{cap.name} is a built-in or configured capability; pick another name",
                    )
                )
        if not 1 <= hello.max_concurrency <= MAX_CONCURRENCY:
            bad.append(FieldViolation("hello.max_concurrency", f"1 to {MAX_CONCURRENCY}"))
        if bad:
            raise InvalidArgument("invalid hello", bad, reason="INVALID_HELLO")
        agent_id = f"remote:{hello.name}:{uuid.uuid4().hex[:12]}"
        remote = RemoteAgent(agent_id)
        descriptor = AgentDescriptor(
            id=agent_id,
            name=hello.name,
            description=hello.description,
            kind="remote",
            capabilities=tuple(hello.capabilities),
            max_concurrency=hello.max_concurrency,
            weight=max(1, hello.weight),
            tenants=self.tenants_of(hello.name, tenant),
        )
        self._manager.attach(descriptor, remote)
        return remote

    def tenants_of(self, name: str, owner: str) -> frozenset[str] | None:
        """Who a remote agent ``name`` connected by ``owner`` serves (None: all)."""
        tenants = {owner}
        for grant in self._grants:
            if grant.agent == name and grant.owner == owner:
                if "*" in grant.tenants:
                    return None
                tenants |= grant.tenants
        return frozenset(tenants)

    def disconnect(self, remote: RemoteAgent) -> None:
        self._manager.detach(remote.agent_id)
        remote.close()

    def expired(self, remote: RemoteAgent) -> bool:
        """Silent for three heartbeat intervals: treat as gone."""
        return time.monotonic() - remote.last_seen > 3 * self.heartbeat_interval
