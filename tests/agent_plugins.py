"""Plugin agents the tests load through ``agents.plugins`` (the same path a
user's own agents take). Each has a behaviour a test needs: flaky, failing,
slow, calling others."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext

_flaky_calls: dict[str, int] = {}


class MathAgent(Agent):
    name = "math"
    description = "adds numbers (has an input schema)"
    capabilities = (
        Capability(
            "math.add",
            "sum of a and b",
            input_schema={
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        ),
    )

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        return {"sum": payload["a"] + payload["b"]}


class FlakyAgent(Agent):
    """Fails retryably until the input's ``fail_times`` attempts have failed."""

    name = "flaky"
    capabilities = (Capability("test.flaky"),)

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if ctx.attempt <= int(payload.get("fail_times", 0)):
            raise AgentError("dependency down", reason="UPSTREAM_DOWN", retryable=True)
        if payload.get("fatal"):
            raise AgentError("bad request to upstream", reason="UPSTREAM_REJECTED")
        return {"attempt": ctx.attempt}


class BoomAgent(Agent):
    name = "boom"
    capabilities = (Capability("test.boom"),)

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        raise ZeroDivisionError("agent bug")


class SlowAgent(Agent):
    """Sleeps ``seconds``, reporting progress; records when it was cancelled
    and, per agent object (one per server), the most runs it had at once."""

    name = "slow"
    capabilities = (Capability("test.slow"),)
    max_concurrency = 1
    cancelled: list[str] = []
    running: dict[int, int] = {}
    most_running: dict[int, int] = {}

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        me = id(self)
        SlowAgent.running[me] = now = SlowAgent.running.get(me, 0) + 1
        SlowAgent.most_running[me] = max(now, SlowAgent.most_running.get(me, 0))
        try:
            return await self._sleep(ctx, payload)
        finally:
            SlowAgent.running[me] -= 1

    async def _sleep(self, ctx: TaskContext, payload: Any) -> Any:
        seconds = float(payload.get("seconds", 0.0))
        marker = payload.get("marker")
        if marker:  # proves to a test (another process) that the run started
            line = f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n"
            await asyncio.to_thread(_append, marker, line)
        steps = max(1, int(seconds / 0.05))
        try:
            for i in range(steps):
                await asyncio.sleep(seconds / steps)
                await ctx.progress(100.0 * (i + 1) / steps, f"step {i + 1}/{steps}")
        except asyncio.CancelledError:
            SlowAgent.cancelled.append(ctx.task_id)
            raise
        return {"slept": seconds, "tag": payload.get("tag")}


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line)


class CallerAgent(Agent):
    """Calls ``target`` with ``input`` through the task context."""

    name = "caller"
    capabilities = (Capability("test.call"),)

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        result = await ctx.call(payload["target"], payload.get("input"), payload.get("timeout"))
        return {"called": payload["target"], "result": result, "left": ctx.remaining() > 0}


class AsyncioAgent(Agent):
    """Uses asyncio as its documentation says an agent may.

    ``asyncio.timed``: enters ``asyncio.timeout(limit)`` before its first
    await and sleeps ``seconds``; the timeout must fire in the agent's own
    task (it answers ``{"timed_out": true}``).
    ``asyncio.identity``: whether ``current_task()`` is the same object
    before and after its first await.
    ``asyncio.stubborn``: sleeps ``seconds``; ``mode`` ``ignore`` keeps
    sleeping when cancelled, ``swallow`` returns a result when cancelled.
    """

    name = "asyncio"
    capabilities = (
        Capability("asyncio.timed"),
        Capability("asyncio.identity"),
        Capability("asyncio.stubborn"),
    )
    max_concurrency = 64

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if capability == "asyncio.identity":
            before = asyncio.current_task()
            await asyncio.sleep(0)
            return {"same_task": before is asyncio.current_task() and before is not None}
        seconds = float(payload.get("seconds", 10.0))
        if capability == "asyncio.timed":
            try:
                async with asyncio.timeout(float(payload["limit"])):
                    await asyncio.sleep(seconds)
            except TimeoutError:
                return {"timed_out": True}
            return {"timed_out": False}
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                await asyncio.sleep(left)
            except asyncio.CancelledError:
                if payload.get("mode") == "swallow":
                    return {"swallowed": True}
        return {"slept": seconds}


PLUGINS = [
    f"tests.agent_plugins:{cls.__name__}"
    for cls in (MathAgent, FlakyAgent, BoomAgent, SlowAgent, CallerAgent, AsyncioAgent)
]
