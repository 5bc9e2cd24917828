"""A remote agent in Python for the tests: connects over AgentService.Connect
with a caller's credentials, heartbeats, records every assignment it gets and
answers it (by default with its own name and the input)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc import aio

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc

Request = pb.ConnectRequest
_ECHO = object()


class PyRemoteAgent:
    def __init__(
        self,
        channel: aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        name: str,
        capabilities: Sequence[str],
        *,
        answer: Any = _ECHO,
        max_concurrency: int = 4,
        weight: int = 1,
        hold: asyncio.Event | None = None,
        failure: tuple[str, str] | None = None,
    ) -> None:
        """``answer``: the output of every assignment (default: {agent, input});
        ``hold``: answer only once it is set; ``failure``: (reason, message) to
        fail every assignment with instead."""
        self.hello = Request.Hello(
            name=name,
            capabilities=[pb.Capability(name=c) for c in capabilities],
            max_concurrency=max_concurrency,
            weight=weight,
        )
        self.answer = answer
        self.hold = hold
        self.failure = failure
        self.agent_id = ""
        self.assignments: list[pb.ConnectResponse.Assignment] = []
        self._stub = agents_pb2_grpc.AgentServiceStub(channel)
        self._metadata = metadata
        self._outbox: asyncio.Queue[Request | None] = asyncio.Queue()
        self._call: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inputs(self) -> list[Any]:
        """The input of every assignment, in order."""
        return [from_value(a.input) for a in self.assignments]

    async def _requests(self) -> AsyncIterator[Request]:
        yield Request(hello=self.hello)
        while (item := await self._outbox.get()) is not None:
            yield item

    async def connect(self) -> PyRemoteAgent:
        """Connect and wait for the welcome.

        Raises:
            grpc.RpcError: the server refused the agent.
        """
        self._call = self._stub.Connect(self._requests(), metadata=self._metadata)
        first = await asyncio.wait_for(self._call.read(), 10)
        if first is aio.EOF:
            await self._call  # raises the refusal
        self.agent_id = first.welcome.agent_id
        self._spawn(self._serve())
        self._spawn(self._beat())
        return self

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            self._outbox.put_nowait(Request(heartbeat=Request.Heartbeat()))

    async def _serve(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            while (message := await self._call.read()) is not aio.EOF:
                if message.WhichOneof("kind") == "assignment":
                    self.assignments.append(message.assignment)
                    self._spawn(self._answer(message.assignment))

    async def _answer(self, work: pb.ConnectResponse.Assignment) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if self.failure is not None:
            reason, message = self.failure
            failed = Request.Failure(task_id=work.task_id, reason=reason, message=message)
            self._outbox.put_nowait(Request(failure=failed))
            return
        output = self.answer
        if output is _ECHO:
            output = {"agent": self.hello.name, "input": from_value(work.input)}
        result = Request.Result(task_id=work.task_id, output=to_value(output))
        self._outbox.put_nowait(Request(result=result))

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def __aenter__(self) -> PyRemoteAgent:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
