"""The agents a process hosts, which tenants each may serve, and how one is
picked for a task.

Strategies: ``least_loaded`` (default: lowest in-flight share of its
concurrency), ``round_robin`` and ``weighted`` (smooth weighted round
robin). Saturated agents, disconnected remote agents and agents whose
circuit is open *for the task's tenant* are skipped.

Every lookup takes the caller's tenant: an agent that may not serve a
tenant does not exist for it (not listed, not found, never picked). Circuit
breakers are kept per tenant, so failures of one tenant's tasks never take
a shared agent offline for another.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from datamcp.core.agents.agent import AgentDescriptor, Capability, TaskContext
from datamcp.core.metrics import LatencyHistogram
from datamcp.core.resilience import CircuitBreaker, CircuitState

STRATEGIES = ("least_loaded", "round_robin", "weighted")
#: A circuit opens after this many consecutive agent faults of one tenant...
FAILURE_THRESHOLD = 5
#: ...and stays open this long.
RECOVERY_TIME = 10.0


class Runner(Protocol):
    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any: ...


@dataclass(eq=False, slots=True)
class AgentSlot:
    """One agent as the manager tracks it: what it is, what it runs now, how it does."""

    descriptor: AgentDescriptor
    runner: Runner
    in_flight: int = 0
    connected: bool = True
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    current_weight: int = 0
    #: Circuit breakers of the tenants whose tasks failed here lately (a
    #: breaker is dropped once it closes again: the map stays small).
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.descriptor.id

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.descriptor.max_concurrency

    def serves(self, tenant: str) -> bool:
        return self.descriptor.serves(tenant)

    def healthy(self, tenant: str) -> bool:
        breaker = self.breakers.get(tenant)
        return self.connected and (breaker is None or breaker.state is not CircuitState.OPEN)

    def available(self, tenant: str) -> bool:
        return not self.saturated and self.healthy(tenant)

    def status(self, tenant: str) -> str:
        if not self.connected:
            return "disconnected"
        if not self.healthy(tenant):
            return "unhealthy"
        return "saturated" if self.saturated else "ready"

    def offers(self, capability: str) -> bool:
        return any(c.name == capability for c in self.descriptor.capabilities)

    def capability(self, name: str) -> Capability | None:
        return next((c for c in self.descriptor.capabilities if c.name == name), None)

    def record_fault(self, tenant: str) -> None:
        """An agent or dependency fault while running ``tenant``'s task."""
        self.errors += 1
        breaker = self.breakers.get(tenant)
        if breaker is None:
            breaker = self.breakers[tenant] = CircuitBreaker(
                f"agent:{self.id}", failure_threshold=FAILURE_THRESHOLD, recovery_time=RECOVERY_TIME
            )
        breaker.record_failure()

    def record_success(self, tenant: str) -> None:
        if self.breakers.pop(tenant, None) is not None:
            pass  # closed again: forget it


class AgentRegistry:
    def __init__(self, strategy: str = "least_loaded") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy = strategy
        self._slots: dict[str, AgentSlot] = {}
        self._rr = itertools.count()

    def add(self, slot: AgentSlot) -> None:
        self._slots[slot.id] = slot

    def remove(self, agent_id: str) -> AgentSlot | None:
        return self._slots.pop(agent_id, None)

    def slot(self, agent_id: str) -> AgentSlot | None:
        """The slot by id, whoever it serves (for the manager's own bookkeeping)."""
        return self._slots.get(agent_id)

    def get(self, agent_id: str, tenant: str) -> AgentSlot | None:
        """The agent ``agent_id`` if it may serve ``tenant``."""
        slot = self._slots.get(agent_id)
        return slot if slot is not None and slot.serves(tenant) else None

    def all(self) -> list[AgentSlot]:
        """Every slot, whoever it serves, by id."""
        return sorted(self._slots.values(), key=lambda s: s.id)

    def visible(self, tenant: str) -> list[AgentSlot]:
        """The agents that may serve ``tenant``, by id."""
        return [s for s in self.all() if s.serves(tenant)]

    def shared_capabilities(self) -> set[str]:
        """Capability names of the agents every tenant shares (built-in,
        plugin, configured): reserved, no tenant's remote agent may offer them."""
        return {
            c.name
            for s in self._slots.values()
            if s.descriptor.tenants is None
            for c in s.descriptor.capabilities
        }

    def capability(self, name: str, tenant: str) -> Capability | None:
        """The capability's declaration (its schema), from a connected agent
        that offers it to ``tenant``."""
        for slot in self._slots.values():
            if slot.connected and slot.serves(tenant) and (cap := slot.capability(name)):
                return cap
        return None

    def candidates(self, target: str, tenant: str, *, by_agent: bool) -> list[AgentSlot]:
        if by_agent:
            slot = self.get(target, tenant)
            return [slot] if slot is not None else []
        return [s for s in self._slots.values() if s.offers(target) and s.serves(tenant)]

    def select(
        self, target: str, tenant: str, *, by_agent: bool, exclude: Iterable[str] = ()
    ) -> AgentSlot | None:
        """An available agent for ``tenant``'s ``target`` (a capability, or an
        agent id), or None."""
        skip = set(exclude)
        ready = [
            s
            for s in self.candidates(target, tenant, by_agent=by_agent)
            if s.available(tenant) and s.id not in skip
        ]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        return self._pick(ready)

    def _pick(self, ready: Sequence[AgentSlot]) -> AgentSlot:
        if self.strategy == "round_robin":
            ordered = sorted(ready, key=lambda s: s.id)
            return ordered[next(self._rr) % len(ordered)]
        if self.strategy == "weighted":
            # Smooth weighted round robin: every pick adds each weight, the
            # largest total wins and pays back the sum of weights.
            total = 0
            best = ready[0]
            for slot in ready:
                slot.current_weight += slot.descriptor.weight
                total += slot.descriptor.weight
                if slot.current_weight > best.current_weight:
                    best = slot
            best.current_weight -= total
            return best
        lowest = min(s.in_flight / s.descriptor.max_concurrency for s in ready)
        ties = sorted(
            (s for s in ready if s.in_flight / s.descriptor.max_concurrency == lowest),
            key=lambda s: s.id,
        )
        return ties[next(self._rr) % len(ties)]


def new_slot(descriptor: AgentDescriptor, runner: Runner) -> AgentSlot:
    return AgentSlot(descriptor, runner)
