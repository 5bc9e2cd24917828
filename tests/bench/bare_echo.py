"""The agents baseline: a bare ``grpc.aio`` echo server with no interceptors.

It answers ``datamcp.v1.AgentService/ExecuteTask`` with an
``ExecuteTaskResponse`` whose task has the fields the real server fills in
for a finished echo task (id, capability, agent, tenant, state SUCCEEDED,
attempts, timestamps, the input and the input again as the result), built
per call and stored nowhere. So the difference to the full stack is what the
mesh adds to a task: interceptors, auth, rate limiting, tracing, validation,
placement on the echo agent, and persisting the task and its ``task.*`` events.

Run as ``python -m tests.bench.bare_echo``: it prints the bound port on
stdout, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from datamcp.v1 import agents_pb2, agents_pb2_grpc

_NOT_BENCHED = "the bare benchmark server only serves ExecuteTask"
_AGENT_ID = "builtin:echo"
_TENANT = "bench"
_MAX_ATTEMPTS = 3
_TIMEOUT_NS = 300 * 1_000_000_000


class BareEchoService(agents_pb2_grpc.AgentServiceServicer):
    """Echoes every ``ExecuteTask`` at once; the other methods are UNIMPLEMENTED."""

    async def ExecuteTask(
        self, request: agents_pb2.ExecuteTaskRequest, context: aio.ServicerContext
    ) -> agents_pb2.ExecuteTaskResponse:
        spec = request.task
        task_id = str(uuid.uuid4())
        now = time.time_ns()
        response = agents_pb2.ExecuteTaskResponse()
        task = response.task
        task.id = task_id
        task.capability = spec.capability
        task.agent_id = _AGENT_ID
        task.input.CopyFrom(spec.input)
        task.priority = spec.priority
        task.deadline.FromNanoseconds(now + _TIMEOUT_NS)
        task.tenant = _TENANT
        task.state = agents_pb2.TASK_STATE_SUCCEEDED
        task.attempts = 1
        task.max_attempts = spec.max_attempts or _MAX_ATTEMPTS
        task.result.CopyFrom(spec.input)
        for stamp in (task.create_time, task.update_time, task.start_time, task.end_time):
            stamp.FromNanoseconds(now)
        task.correlation_id = spec.correlation_id or task_id
        return response

    async def _unimplemented(self, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_BENCHED)

    async def ListAgents(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def GetAgent(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def SubmitTask(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def GetTask(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def ListTasks(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def CancelTask(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def SendAgentRequest(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def ListAuditRecords(self, request: object, context: aio.ServicerContext) -> None:
        await self._unimplemented(context)

    async def WatchTask(
        self, request: object, context: aio.ServicerContext
    ) -> AsyncIterator[agents_pb2.WatchTaskResponse]:
        await self._unimplemented(context)
        yield agents_pb2.WatchTaskResponse()  # unreachable: abort raises

    async def Connect(
        self, request_iterator: object, context: aio.ServicerContext
    ) -> AsyncIterator[agents_pb2.ConnectResponse]:
        await self._unimplemented(context)
        yield agents_pb2.ConnectResponse()  # unreachable: abort raises


async def serve(host: str = "127.0.0.1") -> None:
    """Serve on ``host`` port 0, print the port, stop on SIGTERM/SIGINT."""
    server = aio.server()
    agents_pb2_grpc.add_AgentServiceServicer_to_server(BareEchoService(), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve())
