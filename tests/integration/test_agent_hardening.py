"""Agents under hostile and unusual use, through the real server: remote
agents belong to the tenant that connected them, agents run with plain
asyncio semantics, a task is final by its deadline whatever its agent does,
and one tenant's failures never take an agent offline for another."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from datamcp.entrypoints.grpc.values import from_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc
from tests.integration.test_agents import overrides, spec
from tests.remote_agent import PyRemoteAgent
from tests.support import (
    API_KEY,
    RunningServer,
    api_key_config,
    apikey,
    make_settings,
    rich_details,
    running_server,
)

S = pb.TaskState
OTHER_KEY = "globex-key-0123456789abcdef"
A, B = apikey(API_KEY), apikey(OTHER_KEY)


def two_tenants(**extra: Any) -> dict[str, Any]:
    """acme (API_KEY) and globex (OTHER_KEY), plus ``extra``."""
    return overrides(
        **{
            "auth.api_keys": [
                api_key_config(API_KEY, "alice", "acme", ["user"]),
                api_key_config(OTHER_KEY, "bob", "globex", ["user"]),
            ],
            **extra,
        }
    )


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    async with running_server(make_settings(tmp_path, database_url, **two_tenants())) as s:
        yield s


def stub_of(server: RunningServer) -> agents_pb2_grpc.AgentServiceStub:
    return agents_pb2_grpc.AgentServiceStub(server.channel())


async def run(
    stub: agents_pb2_grpc.AgentServiceStub, s: pb.TaskSpec, who: Any, t: float = 10
) -> pb.Task:
    return (await stub.ExecuteTask(pb.ExecuteTaskRequest(task=s), metadata=who, timeout=t)).task


async def refused(call: Any, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value


# --------------------------------------------------------------- tenancy


async def test_a_remote_agent_serves_only_the_tenant_that_connected_it(
    server: RunningServer,
) -> None:
    stub = stub_of(server)
    async with PyRemoteAgent(server.channel(), A, "worker", ["work.do"]) as agent:
        ids_a = {a.id for a in (await stub.ListAgents(pb.ListAgentsRequest(), metadata=A)).agents}
        ids_b = {a.id for a in (await stub.ListAgents(pb.ListAgentsRequest(), metadata=B)).agents}
        assert agent.agent_id in ids_a and agent.agent_id not in ids_b
        assert "builtin:echo" in ids_b  # shared agents stay shared
        await refused(
            stub.GetAgent(pb.GetAgentRequest(id=agent.agent_id), metadata=B),
            grpc.StatusCode.NOT_FOUND,
        )
        # B cannot route to it, by capability or by id, and learns nothing of it.
        err = await refused(
            stub.SubmitTask(pb.SubmitTaskRequest(task=spec("work.do", {"s": "b"})), metadata=B),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "work.do (known" not in str(rich_details(err))
        pinned = pb.TaskSpec(agent_id=agent.agent_id, capability="work.do")
        await refused(
            stub.SubmitTask(pb.SubmitTaskRequest(task=pinned), metadata=B),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await refused(
            stub.SendAgentRequest(
                pb.SendAgentRequestRequest(source_agent_id=agent.agent_id, target="echo"),
                metadata=B,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        task = await run(stub, spec("work.do", {"secret": "a"}), A)
        assert task.state == S.TASK_STATE_SUCCEEDED
        assert from_value(task.result) == {"agent": "worker", "input": {"secret": "a"}}
    assert agent.inputs == [{"secret": "a"}]


async def test_each_tenant_s_tasks_go_to_its_own_agent(server: RunningServer) -> None:
    stub = stub_of(server)
    async with (
        PyRemoteAgent(server.channel(), A, "acme-worker", ["work.do"]) as agent_a,
        PyRemoteAgent(server.channel(), B, "globex-worker", ["work.do"]) as agent_b,
    ):
        results = await asyncio.gather(
            *(run(stub, spec("work.do", {"from": "a", "i": i}), A) for i in range(8)),
            *(run(stub, spec("work.do", {"from": "b", "i": i}), B) for i in range(8)),
        )
    assert all(t.state == S.TASK_STATE_SUCCEEDED for t in results)
    assert {x["from"] for x in agent_a.inputs} == {"a"} and len(agent_a.inputs) == 8
    assert {x["from"] for x in agent_b.inputs} == {"b"} and len(agent_b.inputs) == 8
    for task in results:
        answer = from_value(task.result)
        expected = "acme-worker" if answer["input"]["from"] == "a" else "globex-worker"
        assert answer["agent"] == expected


async def test_a_queued_task_waits_for_an_agent_of_its_own_tenant(server: RunningServer) -> None:
    stub = stub_of(server)
    release = asyncio.Event()
    b_agent = PyRemoteAgent(server.channel(), B, "b", ["work.q"], max_concurrency=1, hold=release)
    async with b_agent:
        first, second = [
            (
                await stub.SubmitTask(
                    pb.SubmitTaskRequest(task=spec("work.q", {"n": n}, timeout=30)), metadata=B
                )
            ).task
            for n in (1, 2)
        ]
        assert second.state == S.TASK_STATE_QUEUED
        # An agent of another tenant with room must not take B's waiting task.
        async with PyRemoteAgent(server.channel(), A, "a", ["work.q"]) as a_agent:
            await asyncio.sleep(0.3)
            queued = (await stub.GetTask(pb.GetTaskRequest(id=second.id), metadata=B)).task
            assert queued.state == S.TASK_STATE_QUEUED
            release.set()
            for task_id in (first.id, second.id):
                async with asyncio.timeout(10):
                    while (
                        task := (await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=B)).task
                    ).state != S.TASK_STATE_SUCCEEDED:
                        await asyncio.sleep(0.02)
                assert from_value(task.result)["agent"] == "b"
        assert a_agent.inputs == []
    assert b_agent.inputs == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("name", ["echo", "sql.query", "memory.get", "math.add"])
async def test_a_remote_agent_may_not_offer_a_shared_capability_name(
    server: RunningServer, name: str
) -> None:
    agent = PyRemoteAgent(server.channel(), A, "squatter", ["work.do", name])
    err = await refused(agent.connect(), grpc.StatusCode.INVALID_ARGUMENT)
    fields = [v.field for v in rich_details(err)["BadRequest"].field_violations]
    assert fields == ["hello.capabilities[1].name"]
    await agent.close()
    echo = await run(stub_of(server), spec("echo", {"x": 1}), B)
    assert echo.agent_id == "builtin:echo"


async def test_a_granted_remote_agent_serves_the_granted_tenants(
    tmp_path: Path, database_url: str
) -> None:
    grants = [{"agent": "shared-worker", "owner": "acme", "tenants": ["globex"]}]
    settings = make_settings(tmp_path, database_url, **two_tenants(**{"agents.grants": grants}))
    async with running_server(settings) as server:
        stub = stub_of(server)
        async with (
            PyRemoteAgent(server.channel(), A, "shared-worker", ["work.share"]) as shared,
            PyRemoteAgent(server.channel(), B, "shared-worker", ["work.mine"]) as not_granted,
        ):
            ids_b = {
                a.id for a in (await stub.ListAgents(pb.ListAgentsRequest(), metadata=B)).agents
            }
            assert shared.agent_id in ids_b and not_granted.agent_id in ids_b
            task = await run(stub, spec("work.share", {"from": "b"}), B)
            assert task.state == S.TASK_STATE_SUCCEEDED and task.tenant == "globex"
            # The grant names the owner: globex's agent of that name is not shared.
            ids_a = {
                a.id for a in (await stub.ListAgents(pb.ListAgentsRequest(), metadata=A)).agents
            }
            assert not_granted.agent_id not in ids_a
        assert shared.inputs == [{"from": "b"}]


@pytest.mark.parametrize(
    "field, value",
    [
        ("correlation_id", "c" * 129),
        ("correlation_id", "tab\there"),
        ("request_id", "r" * 129),
        ("request_id", "nul\x00id"),
        ("capability", "x" * 300),
        ("agent_id", "a\nb"),
    ],
)
async def test_task_identifiers_are_checked_at_the_edge(
    server: RunningServer, field: str, value: str
) -> None:
    stub = stub_of(server)
    task = spec("echo", {"x": 1}) if field != "capability" else pb.TaskSpec()
    setattr(task, field, value)
    for call in (
        stub.ExecuteTask(pb.ExecuteTaskRequest(task=task), metadata=A, timeout=10),
        stub.SubmitTask(pb.SubmitTaskRequest(task=task), metadata=A, timeout=10),
    ):
        err = await refused(call, grpc.StatusCode.INVALID_ARGUMENT)
        fields = [v.field for v in rich_details(err)["BadRequest"].field_violations]
        assert f"task.{field}" in fields
    listed = await stub.ListTasks(pb.ListTasksRequest(), metadata=A)
    assert list(listed.tasks) == []


async def test_a_remote_agents_hostile_failure_is_stored_tamed(server: RunningServer) -> None:
    stub = stub_of(server)
    failure = ("bad reason with spaces " * 20, "m" * 100_000)
    async with PyRemoteAgent(server.channel(), A, "rude", ["work.rude"], failure=failure):
        task = await run(stub, spec("work.rude", {}), A)
    assert task.state == S.TASK_STATE_FAILED
    assert task.error.reason == "AGENT_ERROR"
    assert len(task.error.message) < 3000
    stored = (await stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=A)).task
    assert stored.error.reason == "AGENT_ERROR" and stored.state == S.TASK_STATE_FAILED


# ------------------------------------------------------- asyncio semantics


async def test_an_agent_runs_in_its_own_task_from_its_first_line(server: RunningServer) -> None:
    stub = stub_of(server)
    same = await run(stub, spec("asyncio.identity", {}), A)
    assert from_value(same.result) == {"same_task": True}
    started = time.monotonic()
    timed = await run(stub, spec("asyncio.timed", {"limit": 0.2, "seconds": 30}), A)
    assert from_value(timed.result) == {"timed_out": True}
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("mode", ["ignore", "swallow"])
async def test_a_task_is_final_by_its_deadline_whatever_its_agent_does(
    server: RunningServer, mode: str
) -> None:
    stub = stub_of(server)
    started = time.monotonic()
    task = await run(
        stub, spec("asyncio.stubborn", {"seconds": 30, "mode": mode}, timeout=0.5), A, t=20
    )
    elapsed = time.monotonic() - started
    assert task.state == S.TASK_STATE_TIMED_OUT, task
    assert elapsed < 0.5 + 1.0 + 2.0  # deadline + cancel grace + slack
    # The agent's slot is free again: the next task runs at once.
    assert (await run(stub, spec("asyncio.identity", {}), A)).state == S.TASK_STATE_SUCCEEDED


async def test_cancel_ends_a_task_whose_agent_ignores_cancellation(server: RunningServer) -> None:
    stub = stub_of(server)
    submitted = await stub.SubmitTask(
        pb.SubmitTaskRequest(task=spec("asyncio.stubborn", {"seconds": 30, "mode": "ignore"})),
        metadata=A,
    )
    task_id = submitted.task.id
    async with asyncio.timeout(5):
        while (await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=A)).task.state != (
            S.TASK_STATE_RUNNING
        ):
            await asyncio.sleep(0.02)
    started = time.monotonic()
    cancelled = (await stub.CancelTask(pb.CancelTaskRequest(id=task_id), metadata=A)).task
    assert cancelled.state == S.TASK_STATE_CANCELLED
    assert time.monotonic() - started < 1.0 + 2.0


@pytest.mark.pg
async def test_sql_timeout_cancels_the_statement_in_postgres(
    tmp_path: Path, pg_database: str
) -> None:
    settings = make_settings(
        tmp_path, None, **two_tenants(**{"agents.sql_connections": {"pg": pg_database}})
    )
    marker = f"sleep_marker_{int(time.time() * 1000)}"
    query = f"SELECT pg_sleep(10) AS {marker}"
    async with running_server(settings) as server:
        started = time.monotonic()
        task = await run(
            stub_of(server),
            spec("sql.query", {"connection": "pg", "query": query}, timeout=1.5),
            A,
            t=30,
        )
        elapsed = time.monotonic() - started
        assert task.state in (S.TASK_STATE_TIMED_OUT, S.TASK_STATE_FAILED), task
        if task.state == S.TASK_STATE_FAILED:
            assert task.error.reason == "SQL_TIMEOUT"
        assert elapsed < 1.5 + 1.0 + 2.0
        dsn = make_url(pg_database).set(drivername="postgresql")
        conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
        try:
            running = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> "
                "pg_backend_pid() AND state = 'active'",
                f"%{marker}%",
            )
        finally:
            await conn.close()
        assert running == 0


# ---------------------------------------------------------- circuit breakers


async def test_caller_errors_never_open_a_shared_agents_circuit(
    tmp_path: Path, database_url: str
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "people.csv").write_text("name,age\nann,31\n")
    settings = make_settings(
        tmp_path,
        database_url,
        **two_tenants(**{"agents.profile_roots": [str(files)]}),
    )
    async with running_server(settings) as server:
        stub = stub_of(server)
        for _ in range(8):  # well past the circuit's threshold
            bad = await run(stub, spec("profile.file", {"path": "/etc/passwd"}), A)
            assert (bad.state, bad.error.reason) == (S.TASK_STATE_FAILED, "PATH_NOT_ALLOWED")
        good = spec("profile.file", {"path": str(files / "people.csv")}, timeout=5)
        for who in (B, A):
            task = await run(stub, good, who)
            assert task.state == S.TASK_STATE_SUCCEEDED, task
        agent = (await stub.GetAgent(pb.GetAgentRequest(id="builtin:profile"), metadata=A)).agent
        assert agent.status == pb.AGENT_STATUS_READY


async def test_one_tenants_agent_faults_leave_the_agent_serving_another(
    server: RunningServer,
) -> None:
    stub = stub_of(server)
    for _ in range(5):
        task = await run(stub, spec("test.boom", {}), A)
        assert task.error.reason == "AGENT_ERROR"
    seen_by_a = (await stub.GetAgent(pb.GetAgentRequest(id="plugin:boom"), metadata=A)).agent
    seen_by_b = (await stub.GetAgent(pb.GetAgentRequest(id="plugin:boom"), metadata=B)).agent
    assert seen_by_a.status == pb.AGENT_STATUS_UNHEALTHY
    assert seen_by_b.status == pb.AGENT_STATUS_READY
    # B's task still runs on it (and fails as that agent does), at once.
    task = await run(stub, spec("test.boom", {}, timeout=5), B)
    assert (task.state, task.error.reason) == (S.TASK_STATE_FAILED, "AGENT_ERROR")
