"""The agents a process hosts, and how one is picked for a task.

Strategies: ``least_loaded`` (default: lowest in-flight share of its
concurrency), ``round_robin`` and ``weighted`` (smooth weighted round
robin). Saturated agents, unhealthy ones (their circuit is open after
repeated failures) and disconnected remote agents are skipped.
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


class Runner(Protocol):
    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any: ...


@dataclass(eq=False, slots=True)
class AgentSlot:
    """One agent as the manager tracks it: what it is, what it runs now, how it does."""

    descriptor: AgentDescriptor
    runner: Runner
    breaker: CircuitBreaker
    in_flight: int = 0
    connected: bool = True
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    current_weight: int = 0

    @property
    def id(self) -> str:
        return self.descriptor.id

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.descriptor.max_concurrency

    @property
    def healthy(self) -> bool:
        return self.connected and self.breaker.state is not CircuitState.OPEN

    @property
    def available(self) -> bool:
        return self.healthy and not self.saturated

    @property
    def status(self) -> str:
        if not self.connected:
            return "disconnected"
        if not self.healthy:
            return "unhealthy"
        return "saturated" if self.saturated else "ready"

    def offers(self, capability: str) -> bool:
        return any(c.name == capability for c in self.descriptor.capabilities)

    def capability(self, name: str) -> Capability | None:
        return next((c for c in self.descriptor.capabilities if c.name == name), None)


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

    def get(self, agent_id: str) -> AgentSlot | None:
        return self._slots.get(agent_id)

    def all(self) -> list[AgentSlot]:
        return sorted(self._slots.values(), key=lambda s: s.id)

    def offering(self, capability: str) -> list[AgentSlot]:
        return [s for s in self._slots.values() if s.offers(capability)]

    def capability(self, name: str) -> Capability | None:
        """The capability's declaration (its schema), from any agent offering it."""
        for slot in self._slots.values():
            if slot.connected and (cap := slot.capability(name)) is not None:
                return cap
        return None

    def candidates(self, target: str, *, by_agent: bool) -> list[AgentSlot]:
        if by_agent:
            slot = self._slots.get(target)
            return [slot] if slot is not None else []
        return self.offering(target)

    def select(
        self, target: str, *, by_agent: bool, exclude: Iterable[str] = ()
    ) -> AgentSlot | None:
        """An available agent for ``target`` (a capability, or an agent id), or None."""
        skip = set(exclude)
        ready = [
            s
            for s in self.candidates(target, by_agent=by_agent)
            if s.available and s.id not in skip
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
    """A slot whose circuit opens after 5 consecutive failures, for 10 seconds."""
    return AgentSlot(
        descriptor,
        runner,
        CircuitBreaker(f"agent:{descriptor.id}", failure_threshold=5, recovery_time=10.0),
    )
