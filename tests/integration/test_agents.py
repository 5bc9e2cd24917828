"""AgentService through the real server: routing, lifecycle, retries, timeouts,
cancellation, queueing, idempotency, agent-to-agent calls, audit, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc, events_pb2, events_pb2_grpc
from tests.agent_plugins import PLUGINS, SlowAgent
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


def spec(capability: str, payload: Any = None, **kw: Any) -> pb.TaskSpec:
    timeout = kw.pop("timeout", None)
    out = pb.TaskSpec(capability=capability, input=to_value(payload), **kw)
    if timeout is not None:
        out.timeout.CopyFrom(
            duration_pb2.Duration(nanos=int(timeout * 1e9) % 10**9, seconds=int(timeout))
        )
    return out


def overrides(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "rate_limit.enabled": False,
        "agents.plugins": PLUGINS,
        "agents.retry_base_delay": 0.01,
        "agents.retry_max_delay": 0.05,
    }
    values.update(extra)
    return values


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    async with running_server(make_settings(tmp_path, database_url, **overrides())) as s:
        yield s


def stub_for(server: RunningServer) -> agents_pb2_grpc.AgentServiceStub:
    return agents_pb2_grpc.AgentServiceStub(server.channel())


async def execute(stub: agents_pb2_grpc.AgentServiceStub, s: pb.TaskSpec, t: float = 10) -> pb.Task:
    response = await stub.ExecuteTask(pb.ExecuteTaskRequest(task=s), timeout=t)
    return response.task


async def wait_state(
    stub: agents_pb2_grpc.AgentServiceStub, task_id: str, states: set[int], within: float = 10
) -> pb.Task:
    async with asyncio.timeout(within):
        while True:
            task = (await stub.GetTask(pb.GetTaskRequest(id=task_id))).task
            if task.state in states:
                return task
            await asyncio.sleep(0.02)


async def test_lists_builtin_and_plugin_agents(server: RunningServer) -> None:
    stub = stub_for(server)
    agents = (await stub.ListAgents(pb.ListAgentsRequest())).agents
    by_id = {a.id: a for a in agents}
    assert by_id["builtin:echo"].kind == "builtin"
    assert by_id["plugin:math"].kind == "plugin"
    assert by_id["plugin:math"].capabilities[0].input_schema.fields["required"]
    only = (await stub.ListAgents(pb.ListAgentsRequest(capability="math.add"))).agents
    assert [a.id for a in only] == ["plugin:math"]
    got = (await stub.GetAgent(pb.GetAgentRequest(id="builtin:echo"))).agent
    assert got.status == pb.AGENT_STATUS_READY
    with pytest.raises(grpc.RpcError) as err:
        await stub.GetAgent(pb.GetAgentRequest(id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_execute_persists_task_and_emits_events(server: RunningServer) -> None:
    stub = stub_for(server)
    task = await execute(stub, spec("math.add", {"a": 2, "b": 3}))
    assert task.state == S.TASK_STATE_SUCCEEDED
    assert from_value(task.result) == {"sum": 5}
    assert task.agent_id == "plugin:math" and task.attempts == 1
    stored = (await stub.GetTask(pb.GetTaskRequest(id=task.id))).task
    assert stored.state == S.TASK_STATE_SUCCEEDED and from_value(stored.result) == {"sum": 5}
    events = events_pb2_grpc.EventServiceStub(server.channel())
    types = []
    flt = events_pb2.EventFilter(types=["task.*"], subject=task.id)
    async for r in events.Replay(events_pb2.ReplayRequest(filter=flt), timeout=5):
        types.append(r.event.type)
        assert r.event.correlation_id == task.correlation_id
    assert types == ["task.submitted", "task.started", "task.succeeded"]
    agent = (await stub.GetAgent(pb.GetAgentRequest(id="plugin:math"))).agent
    assert agent.stats.requests == 1 and agent.stats.errors == 0


async def test_bad_input_is_refused_with_field_details(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, **overrides(**{"agents.max_input_bytes": 100}))
    async with running_server(settings) as server:
        stub = stub_for(server)
        cases = [
            (spec("no.such"), "task.capability"),
            (spec("math.add", {"a": 1}), "task.input"),
            (spec("math.add", {"a": 1, "b": "x"}), "task.input.b"),
            (spec("echo", "x" * 200), "task.input"),
            (spec("echo", 1, timeout=0.001), "task.timeout"),
            (spec("echo", 1, priority=1000), "task.priority"),
            (pb.TaskSpec(), "task.capability"),
        ]
        for bad, field in cases:
            with pytest.raises(grpc.RpcError) as err:
                await stub.SubmitTask(pb.SubmitTaskRequest(task=bad), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            fields = [v.field for v in rich_details(err.value)["BadRequest"].field_violations]
            assert field in fields, (bad, fields)
        # A call deadline too short to run anything is refused, not queued.
        with pytest.raises(grpc.RpcError) as err:
            await stub.ExecuteTask(pb.ExecuteTaskRequest(task=spec("echo", 1)), timeout=0.005)
        assert err.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        tasks = (await stub.ListTasks(pb.ListTasksRequest())).tasks
        assert list(tasks) == []  # nothing half-stored


async def test_request_id_makes_submission_idempotent(server: RunningServer) -> None:
    stub = stub_for(server)
    s = spec("echo", {"n": 1}, request_id="order-42")
    results = await asyncio.gather(
        *(stub.SubmitTask(pb.SubmitTaskRequest(task=s), timeout=5) for _ in range(8))
    )
    ids = {r.task.id for r in results}
    assert len(ids) == 1
    assert sum(not r.duplicate for r in results) == 1
    done = await wait_state(stub, ids.pop(), {S.TASK_STATE_SUCCEEDED})
    again = await stub.SubmitTask(pb.SubmitTaskRequest(task=s), timeout=5)
    assert again.duplicate and again.task.id == done.id
    assert again.task.state == S.TASK_STATE_SUCCEEDED
    listed = (await stub.ListTasks(pb.ListTasksRequest(capability="echo"))).tasks
    assert len(listed) == 1


async def test_retryable_errors_are_retried_and_others_are_not(server: RunningServer) -> None:
    stub = stub_for(server)
    ok = await execute(stub, spec("test.flaky", {"fail_times": 2}))
    assert ok.state == S.TASK_STATE_SUCCEEDED and ok.attempts == 3
    exhausted = await execute(stub, spec("test.flaky", {"fail_times": 5}, max_attempts=2))
    assert exhausted.state == S.TASK_STATE_FAILED and exhausted.attempts == 2
    assert exhausted.error.reason == "UPSTREAM_DOWN" and exhausted.error.retryable
    fatal = await execute(stub, spec("test.flaky", {"fatal": True}))
    assert fatal.state == S.TASK_STATE_FAILED and fatal.attempts == 1
    assert fatal.error.reason == "UPSTREAM_REJECTED"
    boom = await execute(stub, spec("test.boom", {}))
    assert boom.state == S.TASK_STATE_FAILED and boom.attempts == 1
    assert boom.error.reason == "AGENT_ERROR" and "error id" in boom.error.message
    assert "ZeroDivisionError" not in boom.error.message  # the stack is in the server log
    # The agent that raised failed only its own task.
    assert (await execute(stub, spec("echo", 7))).state == S.TASK_STATE_SUCCEEDED


async def test_hanging_agent_times_out_and_frees_its_slot(server: RunningServer) -> None:
    stub = stub_for(server)
    hung = await execute(stub, spec("test.slow", {"seconds": 30}, timeout=0.3))
    assert hung.state == S.TASK_STATE_TIMED_OUT and hung.error.reason == "TIMEOUT"
    quick = await execute(stub, spec("test.slow", {"seconds": 0.01}))
    assert quick.state == S.TASK_STATE_SUCCEEDED


async def test_cancel_reaches_the_running_agent(server: RunningServer) -> None:
    stub = stub_for(server)
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(task=spec("test.slow", {"seconds": 30})))
    ).task
    await wait_state(stub, task.id, {S.TASK_STATE_RUNNING})
    cancelled = (await stub.CancelTask(pb.CancelTaskRequest(id=task.id), timeout=5)).task
    assert cancelled.state == S.TASK_STATE_CANCELLED
    assert task.id in SlowAgent.cancelled
    with pytest.raises(grpc.RpcError) as err:
        await stub.CancelTask(pb.CancelTaskRequest(id=task.id), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stored = (await stub.GetTask(pb.GetTaskRequest(id=task.id))).task
    assert stored.state == S.TASK_STATE_CANCELLED


async def test_busy_agent_queues_by_priority_and_full_queue_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, **overrides(**{"agents.queue_size": 3}))
    async with running_server(settings) as server:
        stub = stub_for(server)

        async def submit(payload: Any, priority: int = 0) -> pb.Task:
            s = spec("test.slow", payload, priority=priority)
            return (await stub.SubmitTask(pb.SubmitTaskRequest(task=s), timeout=5)).task

        blocker = await submit({"seconds": 0.5})
        await wait_state(stub, blocker.id, {S.TASK_STATE_RUNNING})
        low = await submit({"seconds": 0.01, "tag": "low"}, priority=-5)
        mid = await submit({"seconds": 0.01, "tag": "mid"})
        high = await submit({"seconds": 0.01, "tag": "high"}, priority=50)
        assert low.state == S.TASK_STATE_QUEUED
        with pytest.raises(grpc.RpcError) as err:
            await submit({"seconds": 0.01})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rich_details(err.value)["RetryInfo"].retry_delay.ToNanoseconds() > 0
        finals = [await wait_state(stub, t.id, {S.TASK_STATE_SUCCEEDED}) for t in (low, mid, high)]
        order = sorted(finals, key=lambda t: t.start_time.ToNanoseconds())
        assert [from_value(t.result)["tag"] for t in order] == ["high", "mid", "low"]


async def test_watch_task_streams_progress_until_final(server: RunningServer) -> None:
    stub = stub_for(server)
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(task=spec("test.slow", {"seconds": 0.5})))
    ).task
    seen = []
    async for update in stub.WatchTask(pb.WatchTaskRequest(id=task.id), timeout=10):
        seen.append(update.task)
    assert seen[-1].state == S.TASK_STATE_SUCCEEDED
    percents = [t.progress.percent for t in seen if t.state == S.TASK_STATE_RUNNING]
    assert len(percents) >= 2 and percents == sorted(percents)
    # Watching a finished task yields it once and ends.
    again = [u async for u in stub.WatchTask(pb.WatchTaskRequest(id=task.id), timeout=5)]
    assert [u.task.state for u in again] == [S.TASK_STATE_SUCCEEDED]


async def test_agent_to_agent_calls_are_audited_with_depth_and_cycle_limits(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, None, **overrides(**{"agents.max_call_depth": 1}))
    async with running_server(settings) as server:
        stub = stub_for(server)
        task = await execute(
            stub, spec("test.call", {"target": "math.add", "input": {"a": 1, "b": 2}})
        )
        assert task.state == S.TASK_STATE_SUCCEEDED, task.error
        assert from_value(task.result)["result"] == {"sum": 3}
        children = (
            await stub.ListTasks(pb.ListTasksRequest(correlation_id=task.correlation_id))
        ).tasks
        child = next(t for t in children if t.id != task.id)
        assert child.parent_task_id == task.id and child.capability == "math.add"
        records = (
            await stub.ListAuditRecords(
                pb.ListAuditRecordsRequest(correlation_id=task.correlation_id)
            )
        ).records
        assert len(records) == 1
        rec = records[0]
        assert (rec.source_agent_id, rec.target_agent_id, rec.outcome, rec.depth) == (
            "plugin:caller",
            "plugin:math",
            "succeeded",
            1,
        )
        assert rec.task_id == child.id and rec.parent_task_id == task.id

        # The caller calling itself: refused as a cycle, and audited.
        loop = await execute(stub, spec("test.call", {"target": "test.call", "input": {}}))
        assert loop.state == S.TASK_STATE_FAILED and loop.error.reason == "CALL_CYCLE"
        # Through the API on behalf of math: math -> caller is depth 1, and the
        # caller's own call to echo would be depth 2, over the limit of 1.
        nested = {"target": "echo", "input": 1}
        with pytest.raises(grpc.RpcError) as err:
            await stub.SendAgentRequest(
                pb.SendAgentRequestRequest(
                    source_agent_id="plugin:math", target="test.call", input=to_value(nested)
                ),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        audits = (await stub.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=100))).records
        assert any(a.outcome == "rejected" and "CALL_DEPTH" in a.error for a in audits)
        assert any(a.source_agent_id == "plugin:math" and a.outcome == "failed" for a in audits)
        sent = await stub.SendAgentRequest(
            pb.SendAgentRequestRequest(
                source_agent_id="plugin:math", target="echo", input=to_value("hi")
            ),
            timeout=10,
        )
        assert sent.task.state == S.TASK_STATE_SUCCEEDED and from_value(sent.task.result) == "hi"
        audits = (await stub.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=100))).records
        assert any(a.id == sent.audit_id and a.outcome == "succeeded" for a in audits)
        # A child inherits what is left of the caller's deadline.
        slow_child = await execute(
            stub,
            spec("test.call", {"target": "test.slow", "input": {"seconds": 5}}, timeout=0.5),
        )
        assert slow_child.state in (S.TASK_STATE_FAILED, S.TASK_STATE_TIMED_OUT)
        grandchild = next(
            t
            for t in (
                await stub.ListTasks(pb.ListTasksRequest(correlation_id=slow_child.correlation_id))
            ).tasks
            if t.id != slow_child.id
        )
        assert grandchild.deadline.ToNanoseconds() <= slow_child.deadline.ToNanoseconds()
        final = await wait_state(
            stub, grandchild.id, {S.TASK_STATE_TIMED_OUT, S.TASK_STATE_CANCELLED}
        )
        assert final.end_time.ToNanoseconds() - final.create_time.ToNanoseconds() < 2e9


async def test_send_agent_request_needs_a_known_source(server: RunningServer) -> None:
    stub = stub_for(server)
    with pytest.raises(grpc.RpcError) as err:
        await stub.SendAgentRequest(
            pb.SendAgentRequestRequest(source_agent_id="ghost", target="echo"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        await stub.SendAgentRequest(
            pb.SendAgentRequestRequest(source_agent_id="builtin:echo", target="no.such"),
            timeout=5,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    records = (await stub.ListAuditRecords(pb.ListAuditRecordsRequest())).records
    assert [r.outcome for r in records] == ["rejected"]


async def test_list_tasks_pages_and_filters(server: RunningServer) -> None:
    stub = stub_for(server)
    for i in range(5):
        await execute(stub, spec("echo", i))
    await execute(stub, spec("test.boom", {}))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListTasks(pb.ListTasksRequest(page_size=2, page_token=token))
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 6
    failed = (await stub.ListTasks(pb.ListTasksRequest(states=[S.TASK_STATE_FAILED]))).tasks
    assert [t.capability for t in failed] == ["test.boom"]
    with pytest.raises(grpc.RpcError) as err:
        await stub.ListTasks(pb.ListTasksRequest(page_token="garbage!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tenants_see_only_their_own_tasks(tmp_path: Path) -> None:
    other_key = "other-tenant-key-0123456789"
    settings = make_settings(
        tmp_path,
        None,
        **overrides(
            **{
                "auth.api_keys": [
                    api_key_config(API_KEY, "alice", "acme", ["user"]),
                    api_key_config(other_key, "bob", "globex", ["user"]),
                ]
            }
        ),
    )
    async with running_server(settings) as server:
        stub = stub_for(server)
        req = pb.ExecuteTaskRequest(task=spec("echo", "secret"))
        task = (await stub.ExecuteTask(req, metadata=apikey(), timeout=5)).task
        assert task.tenant == "acme"
        with pytest.raises(grpc.RpcError) as err:
            await stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=apikey(other_key))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            await stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=apikey(other_key))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        theirs = await stub.ListTasks(pb.ListTasksRequest(), metadata=apikey(other_key))
        assert list(theirs.tasks) == []


async def test_event_trigger_submits_a_task_once(tmp_path: Path) -> None:
    trigger = {
        "name": "orders",
        "types": ["order.created"],
        "action": "agent.submit_task",
        "params": {"capability": "echo"},
    }
    settings = make_settings(tmp_path, None, **overrides(**{"events.triggers": [trigger]}))
    async with running_server(settings) as server:
        events = events_pb2_grpc.EventServiceStub(server.channel())
        stub = stub_for(server)
        event = events_pb2.CloudEvent(
            id="order-1", type="order.created", source="/shop", data=to_value({"order": 1})
        )
        for _ in range(2):  # a re-published event is a no-op; so is a redelivery
            await events.Publish(events_pb2.PublishRequest(event=event), timeout=5)
        async with asyncio.timeout(10):
            while True:
                tasks = (await stub.ListTasks(pb.ListTasksRequest())).tasks
                if tasks and tasks[0].state == S.TASK_STATE_SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
        assert len(tasks) == 1
        assert from_value(tasks[0].result) == {"order": 1}
        assert tasks[0].correlation_id == "order-1"


async def test_graceful_stop_hands_running_tasks_to_the_next_process(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, **overrides())
    async with running_server(settings) as server:
        stub = stub_for(server)
        task = (
            await stub.SubmitTask(pb.SubmitTaskRequest(task=spec("test.slow", {"seconds": 1})))
        ).task
        await wait_state(stub, task.id, {S.TASK_STATE_RUNNING})
    async with running_server(settings) as server:
        stub = stub_for(server)
        done = await wait_state(stub, task.id, {S.TASK_STATE_SUCCEEDED})
        assert done.attempts == 2


async def test_builtin_sql_http_and_profile_agents_through_the_api(tmp_path: Path) -> None:
    import sqlite3

    from aiohttp import web

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER, name TEXT, price REAL)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(1, "a", 2.5), (2, "b", 4.0)])
    files = tmp_path / "files"
    files.mkdir()
    (files / "people.csv").write_text("name,age\nann,31\nbob,\ncid,40\n")

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hi": request.query.get("who"), "auth": request.headers["X-Key"]})

    web_app = web.Application()
    web_app.router.add_get("/v1/hello", hello)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = make_settings(
        tmp_path,
        None,
        **overrides(
            **{
                "agents.sql_connections": {"shop": f"sqlite:///{db}"},
                "agents.profile_roots": [str(files)],
                "agents.http_apis": {
                    "local": {
                        "base_url": f"http://127.0.0.1:{port}/v1/",
                        "headers": {"X-Key": "k1"},
                    }
                },
            }
        ),
    )
    try:
        async with running_server(settings) as server:
            stub = stub_for(server)
            query = {
                "connection": "shop",
                "query": "SELECT name FROM items WHERE price > :p",
                "params": {"p": 3},
            }
            rows = await execute(stub, spec("sql.query", query))
            assert rows.state == S.TASK_STATE_SUCCEEDED, rows.error
            assert from_value(rows.result)["rows"] == [["b"]]
            write = {"connection": "shop", "query": "DELETE FROM items"}
            refused = await execute(stub, spec("sql.query", write))
            assert refused.state == S.TASK_STATE_FAILED
            assert refused.error.reason == "SQL_NOT_ALLOWED"
            profile = await execute(stub, spec("profile.file", {"path": str(files / "people.csv")}))
            assert profile.state == S.TASK_STATE_SUCCEEDED, profile.error
            assert "age" in str(from_value(profile.result))
            outside = await execute(stub, spec("profile.file", {"path": str(db)}))
            assert outside.error.reason == "PATH_NOT_ALLOWED"
            call = {"api": "local", "method": "GET", "path": "hello", "query": {"who": "mesh"}}
            got = await execute(stub, spec("http.request", call))
            assert got.state == S.TASK_STATE_SUCCEEDED, got.error
            assert from_value(got.result)["json"] == {"hi": "mesh", "auth": "k1"}
    finally:
        await runner.cleanup()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)


async def test_tasks_pinned_to_an_agent(server: RunningServer) -> None:
    stub = stub_for(server)
    echo = await execute(stub, pb.TaskSpec(agent_id="builtin:echo", input=to_value(3)))
    assert echo.state == S.TASK_STATE_SUCCEEDED and echo.capability == "echo"
    rows = {"columns": ["x"], "rows": [[1], [2]]}
    profiled = await execute(
        stub,
        pb.TaskSpec(agent_id="builtin:profile", capability="profile.rows", input=to_value(rows)),
    )
    assert profiled.state == S.TASK_STATE_SUCCEEDED, profiled.error
    assert profiled.agent_id == "builtin:profile"
    for bad, field in [
        (pb.TaskSpec(agent_id="builtin:profile"), "task.capability"),  # offers two: name one
        (pb.TaskSpec(agent_id="builtin:echo", capability="math.add"), "task.capability"),
        (pb.TaskSpec(agent_id="builtin:ghost"), "task.agent_id"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            await stub.ExecuteTask(pb.ExecuteTaskRequest(task=bad), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = [v.field for v in rich_details(err.value)["BadRequest"].field_violations]
        assert field in fields
