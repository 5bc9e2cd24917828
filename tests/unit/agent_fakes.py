"""Agents and a task queue for unit tests, and a process of the mesh built over the fakes of
``fakes.py`` the way ``bootstrap.py`` wires one (an instance registered in
the database, an event bus, an ``AgentManager`` on that bus)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from datamcp.core import instances
from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext
from datamcp.core.agents.manager import AgentManager, TaskPolicy
from datamcp.core.agents.queued import QueuedTask
from datamcp.core.events.bus import EventBus
from datamcp.core.instance_model import Instance
from tests.unit.fakes import FakeDatabase

#: Quick retries; no background sweep during a test.
POLICY = TaskPolicy(retry_base_delay=0.001, retry_max_delay=0.005, orphan_interval=3600.0)


class Echo(Agent):
    """Answers its input."""

    name = "echo"
    capabilities = (Capability("test.echo"),)

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        self.runs += 1
        return {"echo": payload, "attempt": ctx.attempt}


class Broken(Agent):
    """Fails every run; ``retryable`` failures until ``heal_after`` runs."""

    name = "broken"
    capabilities = (Capability("test.broken"),)

    def __init__(self, *, retryable: bool = False, heal_after: int | None = None) -> None:
        super().__init__()
        self.retryable = retryable
        self.heal_after = heal_after
        self.runs = 0

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        self.runs += 1
        if self.heal_after is not None and self.runs > self.heal_after:
            return "healed"
        raise AgentError(f"broken on run {self.runs}", reason="BROKEN", retryable=self.retryable)


class Gate(Agent):
    """Runs until the test opens the gate; records what ran and how many at once."""

    name = "gate"
    capabilities = (Capability("test.gate"),)

    def __init__(self, max_concurrency: int = 1) -> None:
        super().__init__()
        self.max_concurrency = max_concurrency
        self.open = asyncio.Event()
        self.started: list[Any] = []
        self.running = 0
        self.most_at_once = 0
        self.cancelled = 0
        self.entered = asyncio.Event()

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        self.started.append(payload)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.entered.set()
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return payload


class FakeTaskQueue:
    """``TaskQueue``: what was sent, as the JSON message bodies a queue
    carries (``down``: every send raises it)."""

    name = "fake-queue"

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.down: BaseException | None = None
        self.closed = False

    async def send(self, task: QueuedTask) -> None:
        if self.down is not None:
            raise self.down
        self.bodies.append(json.dumps(task.to_message()))

    def messages(self) -> list[QueuedTask]:
        """The sent messages as a consumer parses them (message ids m0, m1...)."""
        return [QueuedTask.from_message(json.loads(b), f"m{i}") for i, b in enumerate(self.bodies)]

    async def close(self) -> None:
        self.closed = True


@dataclass
class Process:
    """One process of the mesh on a fake database."""

    db: FakeDatabase
    instance: Instance
    bus: EventBus
    manager: AgentManager

    async def stop(self) -> None:
        """As ``App.close``: the manager hands back its work, then the bus stops."""
        await self.manager.stop()
        await self.bus.stop()


async def start_process(
    db: FakeDatabase,
    *agents: Agent,
    policy: TaskPolicy = POLICY,
    queue: FakeTaskQueue | None = None,
    max_timeout: float | None = None,
) -> Process:
    now = time.time()
    # Not this host: whether it is gone is for its heartbeat to tell.
    instance = Instance(uuid.uuid4().hex, "fake-host", 1, "test", now, now)
    await instances.register(db.uow, instance)  # type: ignore[arg-type]
    bus = EventBus(db.uow)  # type: ignore[arg-type]
    manager = AgentManager(bus, db.uow, instance, policy=policy)  # type: ignore[arg-type]
    for agent in agents:
        manager.add_agent(agent)
    manager.queued_tasks.queue = queue
    manager.queued_tasks.max_timeout = max_timeout
    await bus.start()
    await manager.start()
    return Process(db, instance, bus, manager)
