"""Graceful shutdown: in-flight calls finish within the grace, new calls are
refused, calls beyond the grace are cut off; long-lived streams end at once
with UNAVAILABLE (in-process, and a real server process at SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2 as std_health
from grpc_health.v1 import health_pb2_grpc as std_health_grpc

from datamcp.entrypoints.grpc.values import to_value
from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    pipelines_pb2_grpc,
    streams_pb2,
)
from datamcp.v1 import health_pb2 as datamcp_health
from datamcp.v1 import health_pb2_grpc as datamcp_health_grpc
from tests.agent_plugins import PLUGINS
from tests.probe import S, probe_call, probe_registration
from tests.streams_client import job_spec
from tests.support import make_settings, rich_details, running_server, server_process


async def test_in_flight_call_finishes_and_new_calls_are_refused(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            sleep = probe_call(channel, "Sleep")
            in_flight = asyncio.ensure_future(sleep(S(value="1.0")))
            await asyncio.sleep(0.2)
            stopping = asyncio.create_task(srv.server.stop(5.0))
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sleep(S(value="0"), timeout=2)
            assert (await in_flight).value == "slept"
            await stopping
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_longer_than_the_grace_are_cancelled(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            in_flight = asyncio.ensure_future(probe_call(channel, "Sleep")(S(value="30")))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await srv.server.stop(0.5)
            elapsed = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await in_flight
    assert elapsed < 5
    assert err.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


# --- a real server process: long-lived streams at SIGTERM ------------------------------

GRACE = 15.0


async def _until_ended(call: Any) -> tuple[grpc.StatusCode, str, float]:
    """Read a stream until it ends: (code, ErrorInfo reason, monotonic time)."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        reason = rich_details(error).get("ErrorInfo")
        return error.code(), reason.reason if reason else "", time.monotonic()
    return grpc.StatusCode.OK, "", time.monotonic()


async def _open_streams(ch: grpc.aio.Channel) -> dict[str, asyncio.Task[Any]]:
    """One of each kind of long-lived call, each waiting for more."""
    events = events_pb2_grpc.EventServiceStub(ch)
    agents = agents_pb2_grpc.AgentServiceStub(ch)
    memory = memory_pb2_grpc.MemorySyncServiceStub(ch)
    pipelines = pipelines_pb2_grpc.PipelineServiceStub(ch)
    calls: dict[str, Any] = {}

    subscribe = events.Subscribe()
    await subscribe.write(
        events_pb2.SubscribeRequest(
            open=events_pb2.SubscribeRequest.Open(
                subscription="idle", filter=events_pb2.EventFilter(types=["none.*"])
            )
        )
    )
    assert (await subscribe.read()).HasField("subscribed")
    calls["Subscribe"] = subscribe

    connect = agents.Connect()
    hello = agents_pb2.ConnectRequest.Hello(
        name="idle-remote",
        capabilities=[agents_pb2.Capability(name="remote.idle")],
        max_concurrency=1,
    )
    await connect.write(agents_pb2.ConnectRequest(hello=hello))
    assert (await connect.read()).HasField("welcome")
    calls["Connect"] = connect
    task = await agents.SubmitTask(
        agents_pb2.SubmitTaskRequest(task=agents_pb2.TaskSpec(capability="remote.idle"))
    )
    assert (await connect.read()).HasField("assignment")
    watch_task = agents.WatchTask(agents_pb2.WatchTaskRequest(id=task.task.id))
    await watch_task.read()
    calls["WatchTask"] = watch_task

    watch_health = datamcp_health_grpc.HealthServiceStub(ch).WatchHealth(
        datamcp_health.WatchHealthRequest()
    )
    await watch_health.read()
    calls["WatchHealth"] = watch_health
    standard = std_health_grpc.HealthStub(ch).Watch(std_health.HealthCheckRequest(service=""))
    assert (await standard.read()).status == std_health.HealthCheckResponse.SERVING
    calls["grpc.health.v1.Health/Watch"] = standard
    calls["WatchChanges"] = memory.WatchChanges(memory_pb2.WatchChangesRequest())

    job = await pipelines.CreateStreamJob(
        streams_pb2.CreateStreamJobRequest(
            job=streams_pb2.StreamJob(name="idle", spec=job_spec(size=60))
        )
    )
    push = pipelines.PushRecords()
    await push.write(streams_pb2.PushRecordsRequest(job_id=job.job.id))

    await asyncio.sleep(0.3)
    readers = {name: asyncio.create_task(_until_ended(c)) for name, c in calls.items()}
    readers["PushRecords"] = asyncio.create_task(_until_answered(push))
    return readers


async def _until_answered(call: Any) -> tuple[grpc.StatusCode, str, float]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        reason = rich_details(error).get("ErrorInfo")
        return error.code(), reason.reason if reason else "", time.monotonic()
    return grpc.StatusCode.OK, "", time.monotonic()


def _serve(tmp_path: Path, database_url: str) -> Any:
    env = {
        "DATAMCP_DATABASE_URL": database_url,
        "DATAMCP_SERVER_SHUTDOWN_GRACE": str(GRACE),
        "DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS),
    }
    return server_process("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), env=env)


async def test_sigterm_ends_idle_streams_at_once_and_the_process_exits(
    tmp_path: Path, database_url: str
) -> None:
    """Issue 16, item 9: every kind of long-lived stream (Subscribe, Watch*,
    Connect, PushRecords, the standard health Watch) used to hold the process
    for the whole grace and then be cut. Now each ends with UNAVAILABLE
    (reconnect elsewhere) and the process exits long before the grace."""
    with _serve(tmp_path, database_url) as server:
        async with grpc.aio.insecure_channel(server.target) as ch:
            readers = await _open_streams(ch)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            ended = {name: await asyncio.wait_for(r, GRACE + 5) for name, r in readers.items()}
        code = await asyncio.to_thread(server.proc.wait, GRACE + 10)
        exited = time.monotonic() - signalled
    assert code == 0
    for name, (status, reason, at) in ended.items():
        assert (status, reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN"), name
        assert at - signalled < GRACE / 3, name
    assert exited < GRACE / 3, exited


async def test_sigterm_lets_unary_calls_in_flight_finish(tmp_path: Path) -> None:
    """Streams end at once, while a unary call already running finishes
    within the grace with its real answer."""
    with _serve(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data.db'}") as server:
        async with grpc.aio.insecure_channel(server.target) as ch:
            readers = await _open_streams(ch)
            slow = agents_pb2_grpc.AgentServiceStub(ch).ExecuteTask(
                agents_pb2.ExecuteTaskRequest(
                    task=agents_pb2.TaskSpec(capability="test.slow", input=to_value({"seconds": 2}))
                ),
                timeout=GRACE,
            )
            in_flight = asyncio.ensure_future(slow)
            await asyncio.sleep(0.5)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            ended = [await asyncio.wait_for(r, GRACE + 5) for r in readers.values()]
            answer = await in_flight
            answered = time.monotonic()
        assert await asyncio.to_thread(server.proc.wait, GRACE + 10) == 0
    assert answer.task.state == agents_pb2.TASK_STATE_SUCCEEDED
    assert all(status == grpc.StatusCode.UNAVAILABLE for status, _, _ in ended)
    assert max(at for _, _, at in ended) < answered
    assert answered - signalled < GRACE / 2
