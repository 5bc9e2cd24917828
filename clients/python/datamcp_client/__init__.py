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
