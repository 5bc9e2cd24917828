"""``echo``: returns its input. For probes, examples and benchmarks."""

from __future__ import annotations

from typing import Any

from datamcp.core.agents.agent import Agent, Capability, TaskContext


class EchoAgent(Agent):
    name = "echo"
    description = "Returns its input unchanged."
    capabilities = (
        Capability(
            "echo", "Return the input as the result.", output_schema={"description": "the input"}
        ),
    )
    max_concurrency = 1024

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        return payload
