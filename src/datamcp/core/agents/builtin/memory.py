"""``memory``: agents store and recall context through the memory store.

Defined against :class:`MemoryPort` (core never depends on the memory
service; bootstrap passes it ``core.memory.service.AgentMemory``). Records
live under ``agents/<tenant>/<namespace>``.
"""

from __future__ import annotations

from typing import Any, Protocol

from datamcp.core.agents.agent import Agent, Capability, TaskContext, TaskRefused

_KEY = {"type": "string", "minLength": 1, "maxLength": 512}
_NAMESPACE = {"type": "string", "minLength": 1, "maxLength": 256, "default": "default"}


class MemoryPort(Protocol):
    async def put(self, tenant: str, namespace: str, key: str, value: Any) -> dict[str, Any]:
        """Store a value; returns the stored record (with its version)."""
        ...

    async def get(self, tenant: str, namespace: str, key: str) -> dict[str, Any] | None: ...

    async def search(
        self, tenant: str, namespace: str, text: str, limit: int
    ) -> list[dict[str, Any]]: ...


class MemoryAgent(Agent):
    name = "memory"
    description = "Stores and recalls agent context in the memory store."
    capabilities = (
        Capability(
            "memory.put",
            "store a JSON value under a key",
            input_schema={
                "type": "object",
                "properties": {"namespace": _NAMESPACE, "key": _KEY, "value": {}},
                "required": ["key", "value"],
                "additionalProperties": False,
            },
        ),
        Capability(
            "memory.get",
            "recall the value of a key",
            input_schema={
                "type": "object",
                "properties": {"namespace": _NAMESPACE, "key": _KEY},
                "required": ["key"],
                "additionalProperties": False,
            },
        ),
        Capability(
            "memory.search",
            "records whose key or value contains a text",
            input_schema={
                "type": "object",
                "properties": {
                    "namespace": _NAMESPACE,
                    "text": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                "required": ["text"],
                "additionalProperties": False,
            },
        ),
    )

    def __init__(self, port: MemoryPort) -> None:
        super().__init__()
        self._port = port

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        namespace = f"agents/{payload.get('namespace', 'default')}"
        if capability == "memory.put":
            return await self._port.put(ctx.tenant, namespace, payload["key"], payload["value"])
        if capability == "memory.get":
            record = await self._port.get(ctx.tenant, namespace, payload["key"])
            if record is None:
                raise TaskRefused(f"no memory {payload['key']!r}", reason="MEMORY_NOT_FOUND")
            return record
        records = await self._port.search(
            ctx.tenant, namespace, payload["text"], int(payload.get("limit", 100))
        )
        return {"records": records}
