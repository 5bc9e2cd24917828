"""The world of the tenant matrix (tests/integration/test_tenancy.py): one
real server with authentication on, tenant ``acme`` (a JWT) owning some of
every resource kind (tests/tenancy/acme.py), and tenant ``globex`` (an API
key) that probes them (tests/tenancy/*_rows.py). Here: the two clients, a
remote agent client, and the strings that only acme's data contains, which
no answer to globex may carry."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from grpc import aio

from datamcp.core.agents.agent import Agent, Capability, TaskContext
from datamcp.entrypoints.grpc.values import to_value
from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2_grpc,
    health_pb2_grpc,
    memory_pb2_grpc,
    pipelines_pb2_grpc,
)
from tests.remote_agent import PyRemoteAgent
from tests.support import (
    RunningServer,
)

A_TENANT, B_TENANT = "acme", "globex"
#: Names both tenants use (each must see only its own).
SHARED_SUB, SHARED_PIPE, SHARED_JOB = "shared-sub", "shared-pipe", "shared-job"
SHARED_NS, SHARED_KEY = "shared/ns", "k"
SHARED_REQUEST = "rid-shared"
A_SECRET = "acme-secret-value"
#: What globex searches for: matches acme's secret, never contains all of it.
NEEDLE = "secret-value"
A_CAPABILITY = "acme.work"
SINK_TABLE = "acme_windows"


class HoldAgent(Agent):
    """Runs until cancelled, silently (no progress events): a task that stays
    RUNNING for as long as the matrix needs one."""

    name = "hold"
    capabilities = (Capability("tenancy.hold"),)
    max_concurrency = 10

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        await asyncio.Event().wait()


class Bound:
    """A stub whose calls all carry one caller's credentials."""

    def __init__(self, stub: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._stub = stub
        self._md = tuple(metadata)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return functools.partial(getattr(self._stub, name), metadata=self._md)


@dataclass
class Client:
    """One tenant's view of the server: every service, with its credentials."""

    tenant: str
    metadata: tuple[tuple[str, str], ...]
    channel: aio.Channel

    def __post_init__(self) -> None:
        md = self.metadata
        self.agents = Bound(agents_pb2_grpc.AgentServiceStub(self.channel), md)
        self.events = Bound(events_pb2_grpc.EventServiceStub(self.channel), md)
        self.memory = Bound(memory_pb2_grpc.MemorySyncServiceStub(self.channel), md)
        self.pipelines = Bound(pipelines_pb2_grpc.PipelineServiceStub(self.channel), md)
        self.health = Bound(health_pb2_grpc.HealthServiceStub(self.channel), md)


def RemoteAgentClient(
    client: Client, name: str, capabilities: Sequence[str], **options: Any
) -> PyRemoteAgent:
    """A remote agent connected with ``client``'s credentials."""
    return PyRemoteAgent(client.channel, client.metadata, name, capabilities, **options)


@dataclass
class World:
    server: RunningServer
    tmp: Path
    a: Client
    b: Client
    a_agent: PyRemoteAgent
    #: Ids of acme's resources, by kind.
    ids: dict[str, str] = field(default_factory=dict)
    #: Strings only acme's data holds: no answer to globex may contain one.
    markers: set[str] = field(default_factory=set)
    #: acme's page tokens (page_size 1), by RPC.
    tokens: dict[str, str] = field(default_factory=dict)

    def leaked(self, messages: Sequence[Message]) -> list[str]:
        """acme's markers found in ``messages`` (answers to globex)."""
        blob = "\n".join(json_format.MessageToJson(m) for m in messages)
        return sorted(m for m in self.markers if m in blob)


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def task_spec(capability: str, payload: Any = None, **kw: Any) -> agents_pb2.TaskSpec:
    timeout = kw.pop("timeout", 30.0)
    return agents_pb2.TaskSpec(
        capability=capability, input=to_value(payload), timeout=seconds(timeout), **kw
    )


PIPELINE_SPEC = """
name: {name}
source:
  csv: {{path: {tenant}/in.csv}}
transforms:
  - validate: {{regex: {{id: "[0-9]+"}}}}
destination:
  jsonl: {{path: {tenant}/out.jsonl}}
"""


async def collect(call: Any, seconds_: float = 1.0, limit: int = 1000) -> list[Any]:
    """Messages of a server stream until it ends, ``limit`` arrive, or
    ``seconds_`` pass (a watch that stays open is not an error)."""
    out: list[Any] = []

    async def read() -> None:
        async for message in call:
            out.append(message)
            if len(out) >= limit:
                return

    try:
        await asyncio.wait_for(read(), seconds_)
    except TimeoutError:
        pass
    finally:
        call.cancel()
    return out


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, within: float = 30.0) -> Any:
    """Poll ``check`` until it answers something true."""
    try:
        async with asyncio.timeout(within):
            while not (found := await check()):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None
    return found
