"""The mesh's agents: the remote agents connected to other processes on
this database, so that any replica accepts, lists and pools tasks for them.

A process lists each remote agent that connects to it (an ``instances``
row's agents) and unlists it when it goes; a process that dies takes its
listings with it (only instances alive within ``stale_after`` count). Every
process keeps a copy of the others' listings, read again when an ``agents``
signal says they changed and every ``replicas.check_interval`` otherwise.
Tasks for those agents go to the shared pool (``pool.py``), where the
process the agent is connected to claims them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from datamcp.core.agents.agent import AgentDescriptor, Capability, TaskContext
from datamcp.core.agents.registry import AgentSlot, new_slot
from datamcp.core.agents.schema import SchemaCache
from datamcp.core.background import cancel_and_wait
from datamcp.core.ports import UnitOfWorkFactory
from datamcp.core.signals import Signals

log = logging.getLogger(__name__)


def encode(descriptor: AgentDescriptor) -> str:
    return json.dumps(
        {
            "name": descriptor.name,
            "description": descriptor.description,
            "kind": descriptor.kind,
            "capabilities": [
                {
                    "name": c.name,
                    "description": c.description,
                    "input_schema": c.input_schema,
                    "output_schema": c.output_schema,
                }
                for c in descriptor.capabilities
            ],
            "max_concurrency": descriptor.max_concurrency,
            "weight": descriptor.weight,
            "tenants": None if descriptor.tenants is None else sorted(descriptor.tenants),
        },
        separators=(",", ":"),
    )


def decode(agent_id: str, instance_id: str, text: str) -> AgentDescriptor:
    data: dict[str, Any] = json.loads(text)
    tenants = data.get("tenants")
    return AgentDescriptor(
        id=agent_id,
        name=data["name"],
        description=data.get("description", ""),
        kind=data.get("kind", "remote"),
        capabilities=tuple(Capability(**c) for c in data["capabilities"]),
        max_concurrency=int(data["max_concurrency"]),
        weight=int(data.get("weight", 1)),
        extra={"replica": instance_id},
        tenants=None if tenants is None else frozenset(tenants),
    )


class _Elsewhere:
    """The runner of an agent another process hosts: never run here (its
    tasks go through the pool to that process)."""

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        raise RuntimeError("an agent of another process runs there")


def listing(descriptor: AgentDescriptor) -> AgentSlot:
    """A slot describing an agent another process hosts (for listings only)."""
    return new_slot(descriptor, _Elsewhere())


class AgentDirectory:
    """The remote agents other processes host (this process's own are in
    its registry)."""

    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        me: str,
        signals: Signals,
        clock: Callable[[], float],
        stale_after: float,
        check_interval: float,
        enabled: bool,
        schemas: SchemaCache | None = None,
    ) -> None:
        self.enabled = enabled
        self._schemas = schemas
        self._uow = uow
        self._me = me
        self._signals = signals
        self._clock = clock
        self._stale_after = stale_after
        self._interval = check_interval
        self._elsewhere: dict[str, AgentDescriptor] = {}
        self._texts: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        if enabled:
            signals.subscribe("agents", lambda _key: self._changed.set())

    # --- what others see of this process ----------------------------------------

    def publish(self, descriptor: AgentDescriptor) -> None:
        """A remote agent connected here: list it for the other processes."""
        if self.enabled:
            self._write(self._list(descriptor))

    def withdraw(self, agent_id: str) -> None:
        if self.enabled:
            self._write(self._unlist(agent_id))

    async def _list(self, descriptor: AgentDescriptor) -> None:
        async with self._uow() as tx:
            await tx.instances.list_agent(
                self._me, descriptor.id, encode(descriptor), self._clock()
            )
            await tx.commit()

    async def _unlist(self, agent_id: str) -> None:
        async with self._uow() as tx:
            await tx.instances.unlist_agent(agent_id)
            await tx.commit()

    def _write(self, work: Any) -> None:
        async def write() -> None:
            try:
                await work
            except Exception:
                log.warning("agent listing not written", exc_info=True)
            else:
                self._signals.send("agents")

        task = asyncio.ensure_future(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # --- what this process sees of the others -------------------------------------

    def find(self, agent_id: str, tenant: str) -> AgentDescriptor | None:
        found = self._elsewhere.get(agent_id)
        return found if found is not None and found.serves(tenant) else None

    def visible(self, tenant: str) -> list[AgentDescriptor]:
        return sorted((d for d in self._elsewhere.values() if d.serves(tenant)), key=lambda d: d.id)

    def capability(self, name: str, tenant: str) -> Capability | None:
        for descriptor in self.visible(tenant):
            for cap in descriptor.capabilities:
                if cap.name == name:
                    return cap
        return None

    async def refresh(self) -> None:
        async with self._uow() as tx:
            listed = await tx.instances.listed_agents(self._clock() - self._stale_after)
        old, self._elsewhere = self._elsewhere, {}
        texts, self._texts = self._texts, {}
        for a in listed:
            if a.instance_id == self._me:
                continue
            same = texts.get(a.agent_id) == a.descriptor and a.agent_id in old
            self._elsewhere[a.agent_id] = (
                old[a.agent_id] if same else decode(a.agent_id, a.instance_id, a.descriptor)
            )
            self._texts[a.agent_id] = a.descriptor
        for agent_id, gone in old.items():
            if self._elsewhere.get(agent_id) is not gone and self._schemas is not None:
                for cap in gone.capabilities:
                    self._schemas.forget(cap)

    async def start(self) -> None:
        if self.enabled and self._loop is None:
            await self.refresh()
            self._loop = asyncio.create_task(self._run(), name="agent-directory")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop, *self._writes)
        self._loop = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.refresh()
            except Exception:
                log.warning("agent directory refresh failed", exc_info=True)
