"""Agent selection strategies: least-loaded, round-robin, weighted; busy,
unhealthy and disconnected agents are skipped."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from datamcp.core.agents.agent import AgentDescriptor, Capability, TaskContext
from datamcp.core.agents.registry import AgentRegistry, AgentSlot, new_slot


class _Runner:
    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        return payload


def _slot(name: str, concurrency: int = 4, weight: int = 1) -> AgentSlot:
    d = AgentDescriptor(name, name, "", "builtin", (Capability("x.do"),), concurrency, weight)
    return new_slot(d, _Runner())


def _registry(strategy: str, *slots: AgentSlot) -> AgentRegistry:
    reg = AgentRegistry(strategy)
    for s in slots:
        reg.add(s)
    return reg


def test_least_loaded_prefers_the_lowest_share_and_skips_saturated() -> None:
    a, b = _slot("a", 4), _slot("b", 2)
    reg = _registry("least_loaded", a, b)
    a.in_flight, b.in_flight = 1, 1  # 25% vs 50%
    assert reg.select("x.do", by_agent=False) is a
    a.in_flight = 4  # saturated
    assert reg.select("x.do", by_agent=False) is b
    b.in_flight = 2
    assert reg.select("x.do", by_agent=False) is None


def test_round_robin_rotates() -> None:
    reg = _registry("round_robin", _slot("a"), _slot("b"), _slot("c"))
    picks = [reg.select("x.do", by_agent=False).id for _ in range(6)]  # type: ignore[union-attr]
    assert Counter(picks) == {"a": 2, "b": 2, "c": 2}


def test_weighted_follows_weights() -> None:
    reg = _registry("weighted", _slot("a", weight=3), _slot("b", weight=1))
    picks = Counter(reg.select("x.do", by_agent=False).id for _ in range(40))  # type: ignore[union-attr]
    assert picks == {"a": 30, "b": 10}


def test_unhealthy_disconnected_and_excluded_agents_are_skipped() -> None:
    a, b = _slot("a"), _slot("b")
    reg = _registry("least_loaded", a, b)
    for _ in range(5):
        a.breaker.record_failure()
    assert not a.healthy
    assert {reg.select("x.do", by_agent=False).id for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    b.connected = False
    assert reg.select("x.do", by_agent=False) is None
    b.connected = True
    assert reg.select("x.do", by_agent=False, exclude=["b"]) is None
    assert reg.select("a", by_agent=True) is None  # by id, but unhealthy


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        AgentRegistry("random")
