"""Tenant matrix rows of AgentService: agents, tasks, audit records."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2
from tests.tenancy.probes import (
    NOT_FOUND,
    Row,
    answers,
    not_found,
    status,
)
from tests.tenancy.snapshot import settle
from tests.tenancy.world import (
    A_CAPABILITY,
    A_SECRET,
    NEEDLE,
    SHARED_PIPE,
    SHARED_REQUEST,
    RemoteAgentClient,
    World,
    task_spec,
)

# --- agents, tasks, audit records -----------------------------------------------------

A = agents_pb2


async def _list_agents(w: World) -> list[Message]:
    every = await w.b.agents.ListAgents(A.ListAgentsRequest())
    assert w.ids["agent"] not in {a.id for a in every.agents}
    by_capability = await w.b.agents.ListAgents(A.ListAgentsRequest(capability=A_CAPABILITY))
    assert not by_capability.agents
    return [every, by_capability]


#: How globex may be refused acme's agents: as if they did not exist.
REFUSED = (
    NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)


async def _execute_on_acme_agent(w: World) -> list[Message]:
    """acme's capability and acme's agent id, and the capabilities an unknown
    one's error lists, are unknown to globex."""
    out = []
    for spec in (
        task_spec(A_CAPABILITY, "globex", timeout=5),
        task_spec(A_CAPABILITY, "globex", agent_id=w.ids["agent"], timeout=5),
    ):
        try:
            out.append(await w.b.agents.ExecuteTask(A.ExecuteTaskRequest(task=spec), timeout=10))
        except grpc.RpcError as exc:
            assert exc.code() in REFUSED, exc.details()
    for answer in out:
        assert answer.task.state != A.TASK_STATE_SUCCEEDED, answer.task
    with pytest.raises(grpc.RpcError) as err:
        spec = task_spec("globex.nothing", "globex", timeout=5)
        await w.b.agents.ExecuteTask(A.ExecuteTaskRequest(task=spec), timeout=10)
    assert A_CAPABILITY not in str(err.value.details())
    return out


async def _send_as_acme_agent(w: World) -> list[Message]:
    out = []
    for source, target in ((w.ids["agent"], "echo"), ("plugin:math", A_CAPABILITY)):
        request = A.SendAgentRequestRequest(
            source_agent_id=source, target=target, input=to_value("globex")
        )
        try:
            out.append(await w.b.agents.SendAgentRequest(request, timeout=10))
        except grpc.RpcError as exc:
            assert exc.code() in REFUSED, exc.details()
    for answer in out:
        assert answer.task.state != A.TASK_STATE_SUCCEEDED, answer.task
    return out


async def _request_id_is_per_tenant(w: World) -> list[Message]:
    spec = task_spec("echo", "globex", request_id=SHARED_REQUEST)
    submitted = await w.b.agents.SubmitTask(A.SubmitTaskRequest(task=spec))
    assert submitted.task.id != w.ids["task"] and submitted.task.tenant == "globex"
    executed = await w.b.agents.ExecuteTask(A.ExecuteTaskRequest(task=spec), timeout=30)
    assert executed.task.id == submitted.task.id
    assert from_value(executed.task.result) == "globex"
    return [submitted, executed]


async def _builtin_agents_on_acme_names(w: World) -> list[Message]:
    """The built-in memory and pipeline agents act in the caller's tenant."""
    out = []
    for capability, payload in (
        ("memory.get", {"key": "agent-key"}),
        ("memory.search", {"text": NEEDLE}),
        ("pipeline.run", {"pipeline": SHARED_PIPE}),
    ):
        done = await w.b.agents.ExecuteTask(
            A.ExecuteTaskRequest(task=task_spec(capability, payload)), timeout=30
        )
        if capability == "memory.search":
            assert from_value(done.task.result) == {"records": []}
        elif capability == "memory.get":
            assert done.task.error.reason == "MEMORY_NOT_FOUND", done.task
        out.append(done)  # pipeline.run: globex's own shared-pipe, or none
    return out


async def _own_audit_record(w: World) -> list[Message]:
    """globex's call, even under acme's correlation id, is globex's alone."""
    sent = await w.b.agents.SendAgentRequest(
        A.SendAgentRequestRequest(
            source_agent_id="plugin:math",
            target="echo",
            input=to_value("globex"),
            correlation_id=w.ids["correlation"],
        ),
        timeout=30,
    )
    assert sent.task.state == A.TASK_STATE_SUCCEEDED
    mine = await w.b.agents.ListAuditRecords(A.ListAuditRecordsRequest(page_size=1000))
    assert sent.audit_id in {r.id for r in mine.records}
    return [sent, mine]


async def _acme_work_stays_with_acme(w: World) -> list[Message]:
    """globex connects an agent offering acme's capability (and acme's agent
    name): acme's tasks still run on acme's agent only."""
    async with RemoteAgentClient(
        w.b, "acme-agent", [A_CAPABILITY], answer="from globex", weight=100
    ) as agent:
        for _ in range(4):
            done = await w.a.agents.ExecuteTask(
                A.ExecuteTaskRequest(task=task_spec(A_CAPABILITY, A_SECRET)), timeout=30
            )
            assert from_value(done.task.result) == {"from": A_SECRET}
        assert not agent.assignments, "acme's task reached globex's agent"
    await settle(w)
    return []


async def _builtin_names_are_reserved(w: World) -> list[Message]:
    """globex's agent may not take the built-in 'echo': refused at connect,
    or at least never handed acme's echo tasks."""
    agent = RemoteAgentClient(w.b, "echo", ["echo"], answer="from globex")
    try:
        await agent.__aenter__()
    except grpc.RpcError as exc:  # refused at connect
        assert exc.code() in REFUSED, exc.details()
        return []
    try:
        for _ in range(4):
            done = await w.a.agents.ExecuteTask(
                A.ExecuteTaskRequest(task=task_spec("echo", A_SECRET)), timeout=30
            )
            assert from_value(done.task.result) == A_SECRET
        assert not agent.assignments, "acme's echo task reached globex's agent"
    finally:
        await agent.__aexit__(None, None, None)
        await settle(w)
    return []


async def _globex_agent_hidden_from_acme(w: World) -> list[Message]:
    async with RemoteAgentClient(w.b, "globex-agent", ["globex.work"]) as agent:
        listed = await w.a.agents.ListAgents(A.ListAgentsRequest())
        assert agent.agent_id not in {a.id for a in listed.agents}
        assert await status(w.a.agents.GetAgent(A.GetAgentRequest(id=agent.agent_id))) == NOT_FOUND
    return []


AGENT_ROWS = [
    Row("AgentService/ListAgents", ("agents",), "all and by acme's capability", _list_agents),
    Row("AgentService/GetAgent", ("agents",), "acme's remote agent id",
        not_found(lambda w: w.b.agents.GetAgent(A.GetAgentRequest(id=w.ids["agent"])))),
    Row("AgentService/ExecuteTask", ("agents",), "acme's capability and pinned to acme's agent",
        _execute_on_acme_agent),
    Row("AgentService/ExecuteTask", ("tasks",), "acme's request_id", _request_id_is_per_tenant),
    Row("AgentService/SubmitTask", ("tasks",), "acme's request_id", _request_id_is_per_tenant),
    Row("AgentService/ExecuteTask", ("memory records", "pipelines"),
        "built-in memory and pipeline agents on acme's keys", _builtin_agents_on_acme_names),
    Row("AgentService/GetTask", ("tasks",), "acme's task ids",
        not_found(
            lambda w: w.b.agents.GetTask(A.GetTaskRequest(id=w.ids["task"])),
            lambda w: w.b.agents.GetTask(A.GetTaskRequest(id=w.ids["running_task"])),
            lambda w: w.b.agents.GetTask(A.GetTaskRequest(id=w.ids["remote_task"])),
        )),
    Row("AgentService/ListTasks", ("tasks",), "all and acme's page token",
        answers(
            lambda w: w.b.agents.ListTasks(A.ListTasksRequest(page_size=1000)),
            lambda w: w.b.agents.ListTasks(A.ListTasksRequest(page_token=w.tokens["ListTasks"])),
        )),
    Row("AgentService/ListTasks", ("tasks",), "by acme's correlation id and capability",
        answers(
            lambda w: w.b.agents.ListTasks(A.ListTasksRequest(correlation_id=w.ids["correlation"])),
            lambda w: w.b.agents.ListTasks(A.ListTasksRequest(capability="tenancy.hold")),
        )),
    Row("AgentService/CancelTask", ("tasks",), "acme's running task",
        not_found(lambda w: w.b.agents.CancelTask(A.CancelTaskRequest(id=w.ids["running_task"])))),
    Row("AgentService/WatchTask", ("tasks",), "acme's tasks",
        not_found(
            lambda w: w.b.agents.WatchTask(A.WatchTaskRequest(id=w.ids["task"])),
            lambda w: w.b.agents.WatchTask(A.WatchTaskRequest(id=w.ids["running_task"])),
        )),
    Row("AgentService/SendAgentRequest", ("audit records",), "globex's own call is globex's",
        _own_audit_record),
    Row("AgentService/SendAgentRequest", ("agents",), "as acme's agent and to acme's capability",
        _send_as_acme_agent),
    Row("AgentService/ListAuditRecords", ("audit records",), "all and acme's page token",
        answers(
            lambda w: w.b.agents.ListAuditRecords(A.ListAuditRecordsRequest(page_size=1000)),
            lambda w: w.b.agents.ListAuditRecords(
                A.ListAuditRecordsRequest(page_token=w.tokens["ListAuditRecords"])
            ),
        )),
    Row("AgentService/ListAuditRecords", ("audit records",), "by acme's correlation id and agent",
        answers(
            lambda w: w.b.agents.ListAuditRecords(
                A.ListAuditRecordsRequest(correlation_id=w.ids["correlation"])
            ),
            lambda w: w.b.agents.ListAuditRecords(
                A.ListAuditRecordsRequest(agent_id="plugin:caller")
            ),
        )),
    Row("AgentService/Connect", ("agents", "tasks"), "globex's agent offers acme's capability",
        _acme_work_stays_with_acme, acme_acts=True),
    Row("AgentService/Connect", ("agents", "tasks"), "globex's agent takes built-in echo",
        _builtin_names_are_reserved, acme_acts=True),
    Row("AgentService/Connect", ("agents",), "globex's agent is hidden from acme",
        _globex_agent_hidden_from_acme),
]  # fmt: skip
