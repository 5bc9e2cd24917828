"""The shared task pool: replicas on one PostgreSQL database take each
other's waiting work; priorities, deadlines, cancels and results hold
whichever replica accepted the task and whichever runs it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from datamcp.entrypoints.grpc.values import from_value
from datamcp.v1 import agents_pb2, agents_pb2_grpc, events_pb2_grpc
from tests.agent_plugins import PLUGINS, SlowAgent
from tests.integration.test_agent_hardening import OTHER_KEY, two_tenants
from tests.integration.test_agents import spec
from tests.integration.test_replica_signals import _task_events
from tests.remote_agent import PyRemoteAgent
from tests.support import API_KEY, RunningServer, apikey, make_settings, running_server

pytestmark = pytest.mark.pg

ACME, GLOBEX = apikey(API_KEY), apikey(OTHER_KEY)
FINALS = {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}


@contextlib.asynccontextmanager
async def two_replicas(
    tmp_path: Path, pg_database: str
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    settings = {"agents.plugins": PLUGINS, "rate_limit.enabled": False}
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
    ):
        yield one, two


async def submit(
    stub: agents_pb2_grpc.AgentServiceStub, seconds: float, **fields: object
) -> agents_pb2.Task:
    request = agents_pb2.SubmitTaskRequest(task=spec("test.slow", {"seconds": seconds}, **fields))
    return (await stub.SubmitTask(request)).task


async def states(stub: agents_pb2_grpc.AgentServiceStub, ids: list[str]) -> list[int]:
    return [(await stub.GetTask(agents_pb2.GetTaskRequest(id=i))).task.state for i in ids]


async def test_work_sent_to_one_replica_runs_on_both(tmp_path: Path, pg_database: str) -> None:
    SlowAgent.most_running.clear()
    async with two_replicas(tmp_path, pg_database) as (one, two), one.channel() as ch:
        on_a = agents_pb2_grpc.AgentServiceStub(ch)
        # The slow agent runs one task at a time on each replica.
        ids = [(await submit(on_a, 1.0)).id for _ in range(4)]
        most_running = 0
        async with asyncio.timeout(30):
            while True:
                now = await states(on_a, ids)
                most_running = max(most_running, now.count(agents_pb2.TASK_STATE_RUNNING))
                if all(s == agents_pb2.TASK_STATE_SUCCEEDED for s in now):
                    break
                await asyncio.sleep(0.05)
        # Both replicas ran at once, each at most one at a time (the agent's
        # limit). The states seen may overlap a moment more: a run's slot
        # takes the next task before the previous final state is stored.
        assert most_running >= 2
        assert sorted(SlowAgent.most_running.values()) == [1, 1]
        assert two.server.app.agents.pool.claimed >= 1
        events = events_pb2_grpc.EventServiceStub(ch)
        for task_id in ids:
            types = await _task_events(events, task_id)
            assert [t for t in types if t in FINALS] == ["task.succeeded"], types


async def test_the_pool_serves_the_highest_priority_first(tmp_path: Path, pg_database: str) -> None:
    async with two_replicas(tmp_path, pg_database) as (one, _two), one.channel() as ch:
        on_a = agents_pb2_grpc.AgentServiceStub(ch)
        busy = [(await submit(on_a, 1.0)).id for _ in range(2)]  # both replicas' slots
        async with asyncio.timeout(10):
            while (await states(on_a, busy)).count(agents_pb2.TASK_STATE_RUNNING) < 2:
                await asyncio.sleep(0.05)
        low = (await submit(on_a, 0.1, priority=-5)).id
        high = (await submit(on_a, 0.1, priority=50)).id
        async with asyncio.timeout(20):
            while True:
                low_state, high_state = await states(on_a, [low, high])
                if high_state == agents_pb2.TASK_STATE_SUCCEEDED:
                    break
                # The low one never starts before the high one did.
                assert low_state == agents_pb2.TASK_STATE_QUEUED or high_state in (
                    agents_pb2.TASK_STATE_RUNNING,
                    agents_pb2.TASK_STATE_SUCCEEDED,
                )
                await asyncio.sleep(0.02)
        got = await on_a.WatchTask(agents_pb2.WatchTaskRequest(id=low)).read()
        assert got.task.id == low


async def test_execute_task_answers_with_the_result_whoever_runs_it(
    tmp_path: Path, pg_database: str
) -> None:
    async with (
        two_replicas(tmp_path, pg_database) as (one, two),
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        on_a = agents_pb2_grpc.AgentServiceStub(ch1)
        on_b = agents_pb2_grpc.AgentServiceStub(ch2)
        await submit(on_b, 2.0)  # B's slot is busy
        answers = await asyncio.gather(
            *(
                on_a.ExecuteTask(
                    agents_pb2.ExecuteTaskRequest(
                        task=spec("test.slow", {"seconds": 0.2, "tag": i})
                    ),
                    timeout=30,
                )
                for i in range(3)
            )
        )
        for i, answer in enumerate(answers):
            assert answer.task.state == agents_pb2.TASK_STATE_SUCCEEDED
            assert answer.task.result.struct_value["tag"] == i


async def test_a_pooled_task_is_cancelled_from_any_replica_and_never_starts(
    tmp_path: Path, pg_database: str
) -> None:
    async with (
        two_replicas(tmp_path, pg_database) as (one, two),
        one.channel() as ch1,
        two.channel() as ch2,
    ):
        on_a = agents_pb2_grpc.AgentServiceStub(ch1)
        on_b = agents_pb2_grpc.AgentServiceStub(ch2)
        busy = [(await submit(on_a, 3.0)).id for _ in range(2)]
        waiting = [(await submit(on_a, 0.1)).id for _ in range(2)]
        for stub, task_id in zip((on_a, on_b), waiting, strict=True):
            answer = (await stub.CancelTask(agents_pb2.CancelTaskRequest(id=task_id))).task
            assert answer.state == agents_pb2.TASK_STATE_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await on_b.CancelTask(agents_pb2.CancelTaskRequest(id=waiting[0]))
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for task_id in busy:
            await on_a.CancelTask(agents_pb2.CancelTaskRequest(id=task_id))
        await asyncio.sleep(0.5)  # a late start or second final would have landed
        events = events_pb2_grpc.EventServiceStub(ch1)
        for task_id in waiting:
            types = await _task_events(events, task_id)
            assert [t for t in types if t in FINALS] == ["task.cancelled"], types
            assert "task.started" not in types, types


async def test_a_pooled_task_past_its_deadline_times_out_once(
    tmp_path: Path, pg_database: str
) -> None:
    async with two_replicas(tmp_path, pg_database) as (one, _two), one.channel() as ch:
        on_a = agents_pb2_grpc.AgentServiceStub(ch)
        busy = [(await submit(on_a, 4.0)).id for _ in range(2)]
        late = await submit(on_a, 0.1, timeout=0.5)
        assert late.state == agents_pb2.TASK_STATE_QUEUED
        async with asyncio.timeout(15):
            while (await states(on_a, [late.id]))[0] != agents_pb2.TASK_STATE_TIMED_OUT:
                await asyncio.sleep(0.1)
        for task_id in busy:
            await on_a.CancelTask(agents_pb2.CancelTaskRequest(id=task_id))
        await asyncio.sleep(0.5)
        types = await _task_events(events_pb2_grpc.EventServiceStub(ch), late.id)
        assert [t for t in types if t in FINALS] == ["task.timed_out"], types
        assert "task.started" not in types, types


async def test_a_remote_agent_connected_to_one_replica_serves_its_tenant_on_every_replica(
    tmp_path: Path, pg_database: str
) -> None:
    settings = two_tenants()
    async with (
        running_server(make_settings(tmp_path / "a", pg_database, **settings)) as one,
        running_server(make_settings(tmp_path / "b", pg_database, **settings)) as two,
        two.channel() as ch2,
    ):
        on_b = agents_pb2_grpc.AgentServiceStub(ch2)
        async with PyRemoteAgent(one.channel(), ACME, "worker", ["work.far"]) as agent:
            async with asyncio.timeout(10):  # B hears of it by signal
                while agent.agent_id not in {
                    a.id
                    for a in (
                        await on_b.ListAgents(agents_pb2.ListAgentsRequest(), metadata=ACME)
                    ).agents
                }:
                    await asyncio.sleep(0.05)
            by_capability = await on_b.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(task=spec("work.far", {"n": 1})),
                metadata=ACME,
                timeout=20,
            )
            pinned = await on_b.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(task=spec("", {"n": 2}, agent_id=agent.agent_id)),
                metadata=ACME,
                timeout=20,
            )
            for answer, n in ((by_capability, 1), (pinned, 2)):
                assert answer.task.state == agents_pb2.TASK_STATE_SUCCEEDED
                assert from_value(answer.task.result) == {"agent": "worker", "input": {"n": n}}
            got = (
                await on_b.GetAgent(agents_pb2.GetAgentRequest(id=agent.agent_id), metadata=ACME)
            ).agent
            assert [c.name for c in got.capabilities] == ["work.far"]
            # Another tenant sees nothing of it, on any replica.
            listed = await on_b.ListAgents(agents_pb2.ListAgentsRequest(), metadata=GLOBEX)
            assert agent.agent_id not in {a.id for a in listed.agents}
            for task in (spec("work.far", {}), spec("", {}, agent_id=agent.agent_id)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await on_b.SubmitTask(agents_pb2.SubmitTaskRequest(task=task), metadata=GLOBEX)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await on_b.GetAgent(agents_pb2.GetAgentRequest(id=agent.agent_id), metadata=GLOBEX)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        assert agent.inputs == [{"n": 1}, {"n": 2}]
        # Gone from A: B stops accepting its work.
        async with asyncio.timeout(10):
            while True:
                try:
                    await on_b.SubmitTask(
                        agents_pb2.SubmitTaskRequest(task=spec("work.far", {})), metadata=ACME
                    )
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                    break
                await asyncio.sleep(0.1)
