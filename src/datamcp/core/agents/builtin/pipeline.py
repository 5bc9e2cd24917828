"""``pipeline``: runs a pipeline and answers with the run summary.

Defined against :class:`PipelinePort` (bootstrap passes it
``core.pipelines.service.AgentPort``).
"""

from __future__ import annotations

from typing import Any, Protocol

from datamcp.core.agents.agent import Agent, Capability, TaskContext


class PipelinePort(Protocol):
    async def run(
        self, tenant: str, pipeline: str, params: dict[str, Any], correlation_id: str
    ) -> dict[str, Any]:
        """Run ``pipeline`` to its end; returns the run (id, status, counters)."""
        ...


class PipelineAgent(Agent):
    name = "pipeline"
    description = "Runs a declared pipeline and returns its run summary."
    capabilities = (
        Capability(
            "pipeline.run",
            "run a pipeline by name, with optional parameters",
            input_schema={
                "type": "object",
                "properties": {
                    "pipeline": {"type": "string", "minLength": 1, "maxLength": 256},
                    "params": {"type": "object"},
                },
                "required": ["pipeline"],
                "additionalProperties": False,
            },
        ),
    )
    max_concurrency = 4

    def __init__(self, port: PipelinePort) -> None:
        super().__init__()
        self._port = port

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        return await self._port.run(
            ctx.tenant, payload["pipeline"], dict(payload.get("params", {})), ctx.correlation_id
        )
