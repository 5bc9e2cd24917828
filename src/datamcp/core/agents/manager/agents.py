"""The agents a manager hosts: in-process ones (built-in, plugin,
configured) shared by every tenant, and remote ones that serve the tenant
that connected them (see ``remote.py``)."""

from __future__ import annotations

from datamcp.core.agents.agent import Agent, AgentDescriptor
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.registry import AgentRegistry, AgentSlot, Runner, new_slot
from datamcp.core.agents.schema import SchemaCache
from datamcp.core.errors import FailedPrecondition, NotFound, clip


class AgentHosting:
    def __init__(self, registry: AgentRegistry, schemas: SchemaCache, placement: Placement) -> None:
        self._registry = registry
        self._schemas = schemas
        self._placement = placement
        #: In-process agents, closed at shutdown.
        self.local: list[Agent] = []

    def add_agent(self, agent: Agent, agent_id: str | None = None) -> AgentSlot:
        """Host an in-process agent (built-in, plugin or configured): every
        tenant may use it."""
        descriptor = AgentDescriptor(
            id=agent_id or f"{agent.kind}:{agent.name}",
            name=agent.name,
            description=agent.description,
            kind=agent.kind,
            capabilities=tuple(agent.capabilities),
            max_concurrency=max(1, agent.max_concurrency),
            weight=max(1, agent.weight),
        )
        self.local.append(agent)
        return self.attach(descriptor, agent)

    def attach(self, descriptor: AgentDescriptor, runner: Runner) -> AgentSlot:
        """Host an agent by its descriptor (remote agents come in this way)."""
        for cap in descriptor.capabilities:
            self._schemas.check_schema(cap)
        if self._registry.slot(descriptor.id) is not None:
            raise FailedPrecondition(f"agent {descriptor.id} is already registered")
        slot = new_slot(descriptor, runner)
        self._registry.add(slot)
        self._placement.drain(slot)
        return slot

    def detach(self, agent_id: str) -> None:
        """Stop hosting an agent; its queued tasks stay queued for others."""
        slot = self._registry.remove(agent_id)
        if slot is not None:
            slot.connected = False
            for cap in slot.descriptor.capabilities:
                self._schemas.forget(cap)

    def agents(self, tenant: str, capability: str = "") -> list[AgentSlot]:
        """The agents ``tenant`` may use (offering ``capability``, if given)."""
        slots = self._registry.visible(tenant)
        return [s for s in slots if s.offers(capability)] if capability else slots

    def agent(self, tenant: str, agent_id: str) -> AgentSlot:
        """Raises NotFound: no such agent for this tenant."""
        slot = self._registry.get(agent_id, tenant)
        if slot is None:
            raise NotFound(f"no agent {clip(agent_id)!r}", reason="AGENT_NOT_FOUND")
        return slot
