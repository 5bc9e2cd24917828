"""Agent selection strategies: least-loaded, round-robin, weighted; busy,
unhealthy and disconnected agents are skipped; tenants see only the agents
that may serve them, and one tenant's failures never open another's circuit."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from datamcp.core.agents.agent import AgentDescriptor, Capability, TaskContext
from datamcp.core.agents.registry import AgentRegistry, AgentSlot, new_slot


class _Runner:
    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        return payload


def _slot(
    name: str, concurrency: int = 4, weight: int = 1, tenants: frozenset[str] | None = None
) -> AgentSlot:
    d = AgentDescriptor(
        name, name, "", "builtin", (Capability("x.do"),), concurrency, weight, tenants=tenants
    )
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
    assert reg.select("x.do", "t1", by_agent=False) is a
    a.in_flight = 4  # saturated
    assert reg.select("x.do", "t1", by_agent=False) is b
    b.in_flight = 2
    assert reg.select("x.do", "t1", by_agent=False) is None


def test_round_robin_rotates() -> None:
    reg = _registry("round_robin", _slot("a"), _slot("b"), _slot("c"))
    picks = [reg.select("x.do", "t1", by_agent=False).id for _ in range(6)]  # type: ignore[union-attr]
    assert Counter(picks) == {"a": 2, "b": 2, "c": 2}


def test_weighted_follows_weights() -> None:
    reg = _registry("weighted", _slot("a", weight=3), _slot("b", weight=1))
    picks = Counter(reg.select("x.do", "t1", by_agent=False).id for _ in range(40))  # type: ignore[union-attr]
    assert picks == {"a": 30, "b": 10}


def test_unhealthy_disconnected_and_excluded_agents_are_skipped() -> None:
    a, b = _slot("a"), _slot("b")
    reg = _registry("least_loaded", a, b)
    for _ in range(5):
        a.record_fault("t1")
    assert not a.healthy("t1")
    assert {reg.select("x.do", "t1", by_agent=False).id for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    b.connected = False
    assert reg.select("x.do", "t1", by_agent=False) is None
    b.connected = True
    assert reg.select("x.do", "t1", by_agent=False, exclude=["b"]) is None
    assert reg.select("a", "t1", by_agent=True) is None  # by id, but unhealthy


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        AgentRegistry("random")


def test_an_agent_serving_one_tenant_does_not_exist_for_another() -> None:
    shared, own = _slot("shared"), _slot("own", tenants=frozenset({"t1"}))
    reg = _registry("round_robin", shared, own)
    assert [s.id for s in reg.visible("t1")] == ["own", "shared"]
    assert [s.id for s in reg.visible("t2")] == ["shared"]
    assert reg.get("own", "t2") is None and reg.get("own", "t1") is own
    assert {reg.select("x.do", "t2", by_agent=False).id for _ in range(4)} == {"shared"}  # type: ignore[union-attr]
    assert reg.select("own", "t2", by_agent=True) is None
    assert reg.shared_capabilities() == {"x.do"}


def test_one_tenants_faults_leave_the_agent_healthy_for_others() -> None:
    a = _slot("a")
    reg = _registry("least_loaded", a)
    for _ in range(5):
        a.record_fault("t1")
    assert reg.select("x.do", "t1", by_agent=False) is None
    assert reg.select("x.do", "t2", by_agent=False) is a
    assert a.status("t1") == "unhealthy" and a.status("t2") == "ready"
    a.record_success("t1")
    assert a.healthy("t1") and not a.breakers
