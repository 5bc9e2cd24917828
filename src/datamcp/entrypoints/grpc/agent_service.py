"""datamcp.v1.AgentService: translate, delegate to core.agents, translate back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from datamcp.core.agents.manager import AgentManager
from datamcp.core.agents.model import TaskState
from datamcp.core.agents.remote import Assignment, Cancel, RemoteAgent, RemoteHub
from datamcp.core.context import current_tenant
from datamcp.core.errors import DeadlineExceeded, FieldViolation, InvalidArgument
from datamcp.entrypoints.grpc.agent_convert import (
    agent_to_proto,
    audit_to_proto,
    hello_from_proto,
    same_input,
    spec_from_proto,
    task_to_proto,
)
from datamcp.entrypoints.grpc.convert import (
    Packer,
    duration,
    duration_seconds,
    enum_filter,
    timestamp,
)
from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2, agents_pb2_grpc

Response = agents_pb2.ConnectResponse
_IN_PROCESS = (agents_pb2.EXECUTION_MODE_UNSPECIFIED, agents_pb2.EXECUTION_MODE_IN_PROCESS)


def _wait_limit(context: aio.ServicerContext) -> float | None:
    """What is left of the call deadline, less a margin to answer in."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return remaining - min(0.1, remaining * 0.1)


class AgentService(agents_pb2_grpc.AgentServiceServicer):
    def __init__(self, manager: AgentManager, hub: RemoteHub, page_bytes: int) -> None:
        self._manager = manager
        self._hub = hub
        self._page_bytes = page_bytes

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: aio.ServicerContext
    ) -> agents_pb2.ListAgentsResponse:
        tenant = current_tenant()
        slots = self._manager.agents(tenant, request.capability)
        return agents_pb2.ListAgentsResponse(agents=[agent_to_proto(s, tenant) for s in slots])

    async def GetAgent(
        self, request: agents_pb2.GetAgentRequest, context: aio.ServicerContext
    ) -> agents_pb2.GetAgentResponse:
        tenant = current_tenant()
        slot = self._manager.agent(tenant, request.id)
        return agents_pb2.GetAgentResponse(agent=agent_to_proto(slot, tenant))

    async def ExecuteTask(
        self, request: agents_pb2.ExecuteTaskRequest, context: aio.ServicerContext
    ) -> agents_pb2.ExecuteTaskResponse:
        tenant = current_tenant()
        spec = spec_from_proto(request.task)
        task = await self._manager.execute(tenant, spec, wait_limit=_wait_limit(context))
        if not task.state.final:
            raise DeadlineExceeded(
                f"task {task.id} is still {task.state.name}; follow it with WatchTask",
                reason="TASK_NOT_FINISHED",
                metadata={"task_id": task.id},
            )
        return agents_pb2.ExecuteTaskResponse(
            task=task_to_proto(task, same_input(task, spec, request.task))
        )

    async def SubmitTask(
        self, request: agents_pb2.SubmitTaskRequest, context: aio.ServicerContext
    ) -> agents_pb2.SubmitTaskResponse:
        tenant = current_tenant()
        spec = spec_from_proto(request.task)
        if request.execution_mode == agents_pb2.EXECUTION_MODE_QUEUED:
            task, duplicate = await self._manager.queued_tasks.submit(tenant, spec)
        elif request.execution_mode in _IN_PROCESS:
            task, duplicate = await self._manager.submit(tenant, spec)
        else:
            raise InvalidArgument(
                "unknown execution mode",
                [FieldViolation("execution_mode", "EXECUTION_MODE_* values only")],
            )
        return agents_pb2.SubmitTaskResponse(
            task=task_to_proto(task, same_input(task, spec, request.task)), duplicate=duplicate
        )

    async def GetTask(
        self, request: agents_pb2.GetTaskRequest, context: aio.ServicerContext
    ) -> agents_pb2.GetTaskResponse:
        task = await self._manager.get(current_tenant(), request.id)
        return agents_pb2.GetTaskResponse(task=task_to_proto(task))

    async def ListTasks(
        self, request: agents_pb2.ListTasksRequest, context: aio.ServicerContext
    ) -> agents_pb2.ListTasksResponse:
        states = enum_filter(request.states, TaskState, what="task state", prefix="TASK_STATE_")
        page = Packer(task_to_proto, self._page_bytes)
        _, token = await self._manager.list_tasks(
            current_tenant(),
            states=states,
            capability=request.capability,
            correlation_id=request.correlation_id,
            page_size=request.page_size,
            page_token=request.page_token,
            fits=page,
        )
        return agents_pb2.ListTasksResponse(tasks=page.messages, next_page_token=token)

    async def CancelTask(
        self, request: agents_pb2.CancelTaskRequest, context: aio.ServicerContext
    ) -> agents_pb2.CancelTaskResponse:
        task = await self._manager.cancel(current_tenant(), request.id)
        return agents_pb2.CancelTaskResponse(task=task_to_proto(task))

    async def WatchTask(
        self, request: agents_pb2.WatchTaskRequest, context: aio.ServicerContext
    ) -> AsyncIterator[agents_pb2.WatchTaskResponse]:
        async for task in self._manager.watch(current_tenant(), request.id):
            yield agents_pb2.WatchTaskResponse(task=task_to_proto(task))

    async def SendAgentRequest(
        self, request: agents_pb2.SendAgentRequestRequest, context: aio.ServicerContext
    ) -> agents_pb2.SendAgentRequestResponse:
        timeout = (
            duration_seconds(request.timeout, "timeout") if request.HasField("timeout") else None
        )
        limit = _wait_limit(context)
        if limit is not None:
            timeout = min(timeout, limit) if timeout is not None else limit
        task, audit_id = await self._manager.calls.send_agent_request(
            current_tenant(),
            request.source_agent_id,
            request.target,
            from_value(request.input, "input") if request.HasField("input") else None,
            limit=timeout,
            correlation_id=request.correlation_id,
        )
        return agents_pb2.SendAgentRequestResponse(task=task_to_proto(task), audit_id=audit_id)

    async def ListAuditRecords(
        self, request: agents_pb2.ListAuditRecordsRequest, context: aio.ServicerContext
    ) -> agents_pb2.ListAuditRecordsResponse:
        page = Packer(audit_to_proto, self._page_bytes)
        _, token = await self._manager.calls.audit_records(
            current_tenant(),
            correlation_id=request.correlation_id,
            agent_id=request.agent_id,
            page_size=request.page_size,
            page_token=request.page_token,
            fits=page,
        )
        return agents_pb2.ListAuditRecordsResponse(records=page.messages, next_page_token=token)

    async def Connect(
        self,
        request_iterator: AsyncIterator[agents_pb2.ConnectRequest],
        context: aio.ServicerContext,
    ) -> AsyncIterator[agents_pb2.ConnectResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "hello":
            raise InvalidArgument(
                "the first Connect message must be 'hello'",
                [FieldViolation("hello", "required as the first message")],
            )
        remote = self._hub.connect(hello_from_proto(first.hello), current_tenant())
        try:
            yield Response(
                welcome=Response.Welcome(
                    agent_id=remote.agent_id,
                    heartbeat_interval=duration(self._hub.heartbeat_interval),
                )
            )
            async for message in self._assignments(request_iterator, remote):
                yield message
        finally:
            self._hub.disconnect(remote)

    async def _assignments(
        self, requests: AsyncIterator[agents_pb2.ConnectRequest], remote: RemoteAgent
    ) -> AsyncIterator[agents_pb2.ConnectResponse]:
        """What the server sends, until the agent goes away or falls silent."""
        reader = asyncio.create_task(self._read(requests, remote))
        getter: asyncio.Future[Assignment | Cancel | None] | None = None
        try:
            while not self._hub.expired(remote):
                getter = getter or asyncio.ensure_future(remote.outbox.get())
                waiting: list[asyncio.Future[Any]] = [getter, reader]
                await asyncio.wait(
                    waiting,
                    timeout=self._hub.heartbeat_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reader.done():
                    if (error := reader.exception()) is not None:
                        raise error
                    return
                if not getter.done():
                    continue
                item, getter = getter.result(), None
                if item is None:
                    return
                if isinstance(item, Assignment):
                    yield Response(
                        assignment=Response.Assignment(
                            task_id=item.task_id,
                            capability=item.capability,
                            input=to_value(item.input),
                            deadline=timestamp(item.deadline),
                            attempt=item.attempt,
                            correlation_id=item.correlation_id,
                        )
                    )
                else:
                    yield Response(cancel=Response.Cancel(task_id=item.task_id))
        finally:
            for pending in (getter, reader):
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending

    async def _read(
        self, requests: AsyncIterator[agents_pb2.ConnectRequest], remote: RemoteAgent
    ) -> None:
        async for message in requests:
            remote.seen()
            kind = message.WhichOneof("kind")
            if kind == "progress":
                p = message.progress
                await remote.progress(p.task_id, p.percent, p.message)
            elif kind == "result":
                remote.result(
                    message.result.task_id, from_value(message.result.output, "result.output")
                )
            elif kind == "failure":
                f = message.failure
                remote.failure(f.task_id, f.reason, f.message, f.retryable)
            elif kind == "hello":
                raise InvalidArgument(
                    "'hello' may only be the first Connect message",
                    [FieldViolation("hello", "send it once, first")],
                )
