"""A remote agent in Python for the tests: connects over AgentService.Connect
with a caller's credentials and answers assignments by echoing their input
(with its own name), recording every input it was given."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc

Request = pb.ConnectRequest


class PyRemoteAgent:
    def __init__(
        self,
        channel: aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        name: str,
        capabilities: list[str],
        *,
        max_concurrency: int = 4,
        hold: asyncio.Event | None = None,
    ) -> None:
        """``hold``: answer assignments only once it is set."""
        self.name = name
        self.capabilities = capabilities
        self.max_concurrency = max_concurrency
        self.hold = hold
        self.inputs: list[Any] = []
        self.agent_id = ""
        self._stub = agents_pb2_grpc.AgentServiceStub(channel)
        self._metadata = metadata
        self._outbox: asyncio.Queue[Request | None] = asyncio.Queue()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()

    async def _requests(self) -> AsyncIterator[Request]:
        yield Request(
            hello=Request.Hello(
                name=self.name,
                capabilities=[pb.Capability(name=c) for c in self.capabilities],
                max_concurrency=self.max_concurrency,
            )
        )
        while (item := await self._outbox.get()) is not None:
            yield item

    async def connect(self) -> PyRemoteAgent:
        """Connect and wait for the welcome.

        Raises:
            grpc.RpcError: the server refused the agent.
        """
        self._call = self._stub.Connect(self._requests(), metadata=self._metadata)
        first = await self._call.read()
        if first is aio.EOF:
            await self._call  # raises the refusal
        self.agent_id = first.welcome.agent_id
        self._reader = asyncio.create_task(self._serve())
        return self

    async def _serve(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            while (message := await self._call.read()) is not aio.EOF:
                if message.WhichOneof("kind") != "assignment":
                    continue
                a = message.assignment
                payload = from_value(a.input)
                self.inputs.append(payload)
                self._answers.add(asyncio.create_task(self._answer(a.task_id, payload)))

    async def _answer(self, task_id: str, payload: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        output = {"agent": self.name, "input": payload}
        self._outbox.put_nowait(
            Request(result=Request.Result(task_id=task_id, output=to_value(output)))
        )

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        for answer in self._answers:
            answer.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> PyRemoteAgent:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
