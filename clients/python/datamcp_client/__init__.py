"""Python client of the DataMCP mesh: async first, typed, JSON in and out.

Example:
    import asyncio, datamcp_client

    async def main() -> None:
        async with await datamcp_client.Client.connect("127.0.0.1:50051") as client:
            task = await client.agents.execute("echo", {"a": 1})
            print(task.state.name, task.result)   # SUCCEEDED {'a': 1}

    asyncio.run(main())

For scripts without asyncio, :mod:`datamcp_client.sync` has the same API
with plain functions.
"""

# Exports are loaded on first use (PEP 562): `import datamcp_client` stays
# cheap, so the `datamcp` command (datamcp_client.cli) can answer --help
# without importing grpc and protobuf.
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamcp_client._rpc import RetryPolicy
    from datamcp_client._values import JSON
    from datamcp_client.agents import Agent, AgentsClient, Task, TaskError, TaskState
    from datamcp_client.client import DEFAULT_ADDRESS, Client, TLSConfig
    from datamcp_client.errors import (
        AbortedError,
        AlreadyExistsError,
        CancelledError,
        DataMCPError,
        DeadlineExceededError,
        FailedPreconditionError,
        FieldViolation,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        QuotaViolation,
        ResourceExhaustedError,
        RPCError,
        UnauthenticatedError,
        UnavailableError,
    )
    from datamcp_client.events import (
        DeadLetter,
        Delivery,
        Event,
        EventsClient,
        NewEvent,
        PublishResult,
        Subscription,
        SubscriptionInfo,
    )
    from datamcp_client.health import HealthClient, HealthReport
    from datamcp_client.memory import (
        Conflict,
        MemoryClient,
        MemoryRecord,
        StoreInfo,
        SyncRun,
        SyncStatus,
    )
    from datamcp_client.pipelines import (
        Pipeline,
        PipelinesClient,
        Reject,
        Run,
        RunState,
        Stage,
        Validation,
    )

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "RetryPolicy": "datamcp_client._rpc",
    "JSON": "datamcp_client._values",
    "Agent": "datamcp_client.agents",
    "AgentsClient": "datamcp_client.agents",
    "Task": "datamcp_client.agents",
    "TaskError": "datamcp_client.agents",
    "TaskState": "datamcp_client.agents",
    "DEFAULT_ADDRESS": "datamcp_client.client",
    "Client": "datamcp_client.client",
    "TLSConfig": "datamcp_client.client",
    "AbortedError": "datamcp_client.errors",
    "AlreadyExistsError": "datamcp_client.errors",
    "CancelledError": "datamcp_client.errors",
    "DataMCPError": "datamcp_client.errors",
    "DeadlineExceededError": "datamcp_client.errors",
    "FailedPreconditionError": "datamcp_client.errors",
    "FieldViolation": "datamcp_client.errors",
    "InternalError": "datamcp_client.errors",
    "InvalidArgumentError": "datamcp_client.errors",
    "NotFoundError": "datamcp_client.errors",
    "PermissionDeniedError": "datamcp_client.errors",
    "QuotaViolation": "datamcp_client.errors",
    "ResourceExhaustedError": "datamcp_client.errors",
    "RPCError": "datamcp_client.errors",
    "UnauthenticatedError": "datamcp_client.errors",
    "UnavailableError": "datamcp_client.errors",
    "DeadLetter": "datamcp_client.events",
    "Delivery": "datamcp_client.events",
    "Event": "datamcp_client.events",
    "EventsClient": "datamcp_client.events",
    "NewEvent": "datamcp_client.events",
    "PublishResult": "datamcp_client.events",
    "Subscription": "datamcp_client.events",
    "SubscriptionInfo": "datamcp_client.events",
    "HealthClient": "datamcp_client.health",
    "HealthReport": "datamcp_client.health",
    "Conflict": "datamcp_client.memory",
    "MemoryClient": "datamcp_client.memory",
    "MemoryRecord": "datamcp_client.memory",
    "StoreInfo": "datamcp_client.memory",
    "SyncRun": "datamcp_client.memory",
    "SyncStatus": "datamcp_client.memory",
    "Pipeline": "datamcp_client.pipelines",
    "PipelinesClient": "datamcp_client.pipelines",
    "Reject": "datamcp_client.pipelines",
    "Run": "datamcp_client.pipelines",
    "RunState": "datamcp_client.pipelines",
    "Stage": "datamcp_client.pipelines",
    "Validation": "datamcp_client.pipelines",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamcp_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DEFAULT_ADDRESS",
    "JSON",
    "AbortedError",
    "Agent",
    "AgentsClient",
    "AlreadyExistsError",
    "CancelledError",
    "Client",
    "Conflict",
    "DataMCPError",
    "DeadLetter",
    "DeadlineExceededError",
    "Delivery",
    "Event",
    "EventsClient",
    "FailedPreconditionError",
    "FieldViolation",
    "HealthClient",
    "HealthReport",
    "InternalError",
    "InvalidArgumentError",
    "MemoryClient",
    "MemoryRecord",
    "NewEvent",
    "NotFoundError",
    "PermissionDeniedError",
    "Pipeline",
    "PipelinesClient",
    "PublishResult",
    "QuotaViolation",
    "RPCError",
    "Reject",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Run",
    "RunState",
    "Stage",
    "StoreInfo",
    "Subscription",
    "SubscriptionInfo",
    "SyncRun",
    "SyncStatus",
    "TLSConfig",
    "Task",
    "TaskError",
    "TaskState",
    "UnauthenticatedError",
    "UnavailableError",
    "Validation",
    "__version__",
]
