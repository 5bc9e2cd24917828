"""An event published on the mesh reaches the Lambda events handler through
EventBridge (moto): the server's broker puts it on the bus, a rule with an
SQS target delivers it, ``lambda-local --function events`` drains it, and
the handler's trigger submits and runs the task, once."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from datamcp.core.agents.model import task_id_for
from datamcp.entrypoints.grpc.values import from_value
from datamcp.entrypoints.lambda_local import Poller
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc, events_pb2, events_pb2_grpc
from handlers import _runtime
from tests.aws.conftest import REGION
from tests.events_client import cloud_event
from tests.support import make_settings, running_server

TRIGGERS = [
    {
        "name": "orders",
        "types": ["order.created"],
        "action": "agent.submit_task",
        "params": {"capability": "echo"},
    }
]


@pytest.fixture
def lambda_env(database_url: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATAMCP_DATABASE_URL", database_url)
    monkeypatch.setenv("DATAMCP_EVENTS_TRIGGERS", json.dumps(TRIGGERS))
    monkeypatch.setenv("DATAMCP_LOGGING_LEVEL", "WARNING")
    return database_url


async def test_eventbridge_rule_to_sqs_to_the_events_handler(
    tmp_path: Path, lambda_env: str, moto_endpoint: str, sqs: Any, events: Any
) -> None:
    database_url = lambda_env
    bus = f"mesh-{uuid.uuid4().hex[:8]}"
    await events.create_event_bus(Name=bus)
    url = (await sqs.create_queue(QueueName=f"{bus}-events"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    await events.put_rule(
        Name="orders",
        EventBusName=bus,
        EventPattern=json.dumps({"detail-type": [{"prefix": "order."}]}),
    )
    await events.put_targets(Rule="orders", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    broker = {
        "kind": "eventbridge",
        "bus_name": bus,
        "region": REGION,
        "endpoint_url": moto_endpoint,
        "types": ["order.*"],
    }
    settings = make_settings(tmp_path, database_url, **{"events.brokers": [broker]})
    poller = Poller(url, function="events", region=REGION, endpoint_url=moto_endpoint, wait=1)
    try:
        async with running_server(settings) as server, server.channel() as ch:
            publisher = events_pb2_grpc.EventServiceStub(ch)
            event = cloud_event("order.created", "order-7", {"order": 7})
            event.id = "order-7-created"
            await publisher.Publish(events_pb2.PublishRequest(event=event))
            await publisher.Publish(events_pb2.PublishRequest(event=event))  # a duplicate
            stop = threading.Event()

            async def until_delivered() -> None:
                while poller.deleted < 1:
                    await asyncio.to_thread(poller.poll_once)

            await asyncio.wait_for(until_delivered(), 20)
            stop.set()
            await asyncio.to_thread(poller.run, stop, until_empty=True)
            stub = agents_pb2_grpc.AgentServiceStub(ch)
            task_id = task_id_for("default", "event:order-7-created")
            task = (await stub.GetTask(pb.GetTaskRequest(id=task_id))).task
            assert task.state == pb.TASK_STATE_SUCCEEDED
            assert from_value(task.result) == {"order": 7}
            assert from_value(task.input) == {"order": 7}
            listed = (await stub.ListTasks(pb.ListTasksRequest())).tasks
            assert [t.id for t in listed] == [task_id]
        assert poller.deleted == 1
    finally:
        await asyncio.to_thread(_runtime.shutdown)
