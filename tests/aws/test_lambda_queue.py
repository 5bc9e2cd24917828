"""The mesh hands work to the serverless side, against a moto server:
SubmitTask in queued mode sends to SQS, ``datamcp lambda-local`` drains the
queue through handlers.tasks (same records as in-process), bad input and a
dead queue leave nothing behind, a poisoned message ends in the DLQ by the
redrive policy, and a task a live server is running is not run twice."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.entrypoints.lambda_local import Poller
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc, events_pb2, events_pb2_grpc
from handlers import _runtime
from tests.agent_plugins import PLUGINS
from tests.aws.conftest import REGION
from tests.support import make_settings, rich_details, running_server

QUEUED = pb.EXECUTION_MODE_QUEUED


@pytest.fixture
async def lambda_env(
    moto_endpoint: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The Lambda side's configuration (as the SAM template sets it)."""
    monkeypatch.setenv("DATAMCP_DATABASE_URL", database_url)
    monkeypatch.setenv("DATAMCP_AGENTS_PLUGINS", json.dumps(PLUGINS))
    monkeypatch.setenv("DATAMCP_LOGGING_LEVEL", "WARNING")
    try:
        yield database_url
    finally:
        await asyncio.to_thread(_runtime.shutdown)


async def make_queue(sqs: Any, name: str, **attributes: str) -> tuple[str, str]:
    url = (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    return url, arn


def server_settings(tmp_path: Path, database_url: str, endpoint: str, url: str) -> Any:
    return make_settings(
        tmp_path,
        database_url,
        **{
            "agents.task_queue_url": url,
            "agents.task_queue_region": REGION,
            "agents.task_queue_endpoint_url": endpoint,
            "agents.plugins": PLUGINS,
        },
    )


def poller(endpoint: str, url: str, function: str = "tasks") -> Poller:
    return Poller(url, function=function, region=REGION, endpoint_url=endpoint, wait=0)


async def drain(p: Poller) -> None:
    await asyncio.to_thread(p.run, threading.Event(), until_empty=True)


def submit(capability: str, payload: Any, **kw: Any) -> pb.SubmitTaskRequest:
    spec = pb.TaskSpec(capability=capability, input=to_value(payload), **kw)
    return pb.SubmitTaskRequest(task=spec, execution_mode=QUEUED)


async def task_events(channel: Any, task_id: str) -> list[str]:
    stub = events_pb2_grpc.EventServiceStub(channel)
    flt = events_pb2.EventFilter(types=["task.*"], subject=task_id)
    return [r.event.type async for r in stub.Replay(events_pb2.ReplayRequest(filter=flt))]


async def test_queued_submit_runs_through_sqs_and_the_tasks_handler(
    tmp_path: Path, lambda_env: str, moto_endpoint: str, sqs: Any
) -> None:
    url, _ = await make_queue(sqs, f"tasks-{uuid.uuid4().hex[:8]}")
    settings = server_settings(tmp_path, lambda_env, moto_endpoint, url)
    async with running_server(settings) as server, server.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        reply = await stub.SubmitTask(submit("math.add", {"a": 2, "b": 3}, request_id="q-1"))
        task = reply.task
        assert not reply.duplicate and task.state == pb.TASK_STATE_PENDING
        again = await stub.SubmitTask(submit("math.add", {"a": 2, "b": 3}, request_id="q-1"))
        assert again.duplicate and again.task.id == task.id
        attrs = await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "1"  # sent once
        # Queued means queued: the server does not run it.
        await asyncio.sleep(0.3)
        got = (await stub.GetTask(pb.GetTaskRequest(id=task.id))).task
        assert got.state == pb.TASK_STATE_PENDING
        p = poller(moto_endpoint, url)
        await drain(p)
        assert p.received == 1 and p.deleted == 1
        done = (await stub.GetTask(pb.GetTaskRequest(id=task.id))).task
        assert done.state == pb.TASK_STATE_SUCCEEDED and from_value(done.result) == {"sum": 5}
        assert done.attempts == 1 and done.request_id == "q-1"
        direct = (
            await stub.ExecuteTask(
                pb.ExecuteTaskRequest(
                    task=pb.TaskSpec(capability="math.add", input=to_value({"a": 1, "b": 1}))
                )
            )
        ).task
        assert await task_events(ch, task.id) == await task_events(ch, direct.id)
        lifecycle = ["task.submitted", "task.started", "task.succeeded"]
        assert await task_events(ch, task.id) == lifecycle
        for name in ("capability", "agent_id", "max_attempts", "tenant"):
            assert getattr(done, name) == getattr(direct, name), name
        assert done.correlation_id == task.id


async def test_queued_submit_refuses_bad_input_and_needs_a_queue(
    tmp_path: Path, lambda_env: str, moto_endpoint: str, sqs: Any
) -> None:
    url, _ = await make_queue(sqs, f"tasks-{uuid.uuid4().hex[:8]}")
    async with running_server(server_settings(tmp_path, lambda_env, moto_endpoint, url)) as srv:
        async with srv.channel() as ch:
            stub = agents_pb2_grpc.AgentServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                await stub.SubmitTask(submit("math.add", {"a": 1}))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            fields = [v.field for v in rich_details(err.value)["BadRequest"].field_violations]
            assert "task.input" in fields
            bad_mode = pb.SubmitTaskRequest(task=pb.TaskSpec(capability="echo"), execution_mode=9)  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as err:
                await stub.SubmitTask(bad_mode)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    attrs = await sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
    plain = make_settings(tmp_path / "plain", lambda_env)
    async with running_server(plain) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            await stub.SubmitTask(submit("echo", 1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert rich_details(err.value)["ErrorInfo"].reason == "NO_TASK_QUEUE"


async def test_a_queued_task_must_fit_the_function_that_runs_it(
    tmp_path: Path, lambda_env: str, moto_endpoint: str, sqs: Any
) -> None:
    url, _ = await make_queue(sqs, f"tasks-{uuid.uuid4().hex[:8]}")
    settings = server_settings(tmp_path, lambda_env, moto_endpoint, url)
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        too_long = submit("echo", 1, request_id="long", timeout=Duration(seconds=120))
        with pytest.raises(grpc.RpcError) as err:
            await stub.SubmitTask(too_long)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = rich_details(err.value)
        assert details["ErrorInfo"].reason == "TIMEOUT_EXCEEDS_QUEUE"
        (violation,) = details["BadRequest"].field_violations
        assert violation.field == "task.timeout" and "45s" in violation.description
        assert list((await stub.ListTasks(pb.ListTasksRequest())).tasks) == []
        # In-process, the same task is fine: the limit is the function's.
        spec = pb.TaskSpec(capability="echo", input=to_value(1), timeout=Duration(seconds=120))
        assert (await stub.SubmitTask(pb.SubmitTaskRequest(task=spec))).task.id
        # Without a timeout a queued task gets the function's limit, not the
        # 300 s default it could never use.
        fits = (await stub.SubmitTask(submit("echo", 2, request_id="fits"))).task
        lifetime = fits.deadline.ToDatetime() - fits.create_time.ToDatetime()
        assert lifetime.total_seconds() == pytest.approx(45, abs=0.01)
    sent = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    assert [json.loads(m["Body"])["request_id"] for m in sent["Messages"]] == ["fits"]
    assert json.loads(sent["Messages"][0]["Body"])["timeout"] == 45


async def test_a_dead_queue_is_unavailable_and_stores_nothing(
    tmp_path: Path, lambda_env: str, moto_endpoint: str
) -> None:
    missing = f"{moto_endpoint}/123456789012/no-such-queue"
    async with running_server(server_settings(tmp_path, lambda_env, moto_endpoint, missing)) as srv:
        async with srv.channel() as ch:
            stub = agents_pb2_grpc.AgentServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                await stub.SubmitTask(submit("echo", 1, request_id="lost"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            tasks = (await stub.ListTasks(pb.ListTasksRequest())).tasks
            assert list(tasks) == []


async def test_redrive_moves_a_poisoned_message_to_the_dlq(
    lambda_env: str, moto_endpoint: str, sqs: Any
) -> None:
    name = f"tasks-{uuid.uuid4().hex[:8]}"
    dlq_url, dlq_arn = await make_queue(sqs, f"{name}-dlq")
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    url, _ = await make_queue(sqs, name, VisibilityTimeout="0", RedrivePolicy=redrive)
    good = {"capability": "echo", "input": {"ok": True}, "request_id": "fine"}
    await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(good))
    await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"capability": "no.such"}))
    p = poller(moto_endpoint, url)
    for _ in range(6):  # each receive of the poison fails it; the third moves it
        if not await asyncio.to_thread(p.poll_once):
            break
    assert p.deleted == 1
    dead = await sqs.receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    bodies = [json.loads(m["Body"]) for m in dead.get("Messages", [])]
    assert bodies == [{"capability": "no.such"}]
    left = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    assert left.get("Messages", []) == []


async def test_a_task_a_live_server_runs_is_not_run_again_by_the_handler(
    tmp_path: Path, lambda_env: str, moto_endpoint: str, sqs: Any
) -> None:
    url, _ = await make_queue(sqs, f"tasks-{uuid.uuid4().hex[:8]}", VisibilityTimeout="0")
    marker = tmp_path / "runs.txt"
    payload = {"seconds": 1.0, "marker": str(marker)}
    settings = server_settings(tmp_path, lambda_env, moto_endpoint, url)
    async with running_server(settings) as server, server.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        spec = pb.TaskSpec(capability="test.slow", input=to_value(payload), request_id="both")
        running = (await stub.SubmitTask(pb.SubmitTaskRequest(task=spec))).task  # in process
        body = {"capability": "test.slow", "input": payload, "request_id": "both"}
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
        p = poller(moto_endpoint, url)
        assert await asyncio.to_thread(p.poll_once) == 1
        # RUNNING on a live server: this copy's effect exists, so the record
        # succeeds (no receive counts towards the DLQ) and nothing runs here.
        assert p.deleted == 1
        done = (await stub.ExecuteTask(pb.ExecuteTaskRequest(task=spec), timeout=10)).task
        assert done.id == running.id and done.state == pb.TASK_STATE_SUCCEEDED
        await drain(p)
        assert p.deleted == 1
    assert len(marker.read_text().splitlines()) == 1
