"""Events published through the real server reach AWS through the broker relay
(moto server): straight to SQS, and through an EventBridge rule to SQS."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from datamcp.v1 import events_pb2, events_pb2_grpc, health_pb2, health_pb2_grpc
from tests.aws.conftest import REGION
from tests.events_client import cloud_event
from tests.support import make_settings, running_server


async def _drain(sqs: Any, url: str, want: int, timeout: float = 15) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []

    async def loop() -> None:
        while len(bodies) < want:
            reply = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in reply.get("Messages", []):
                bodies.append(json.loads(message["Body"]))
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    await asyncio.wait_for(loop(), timeout)
    return bodies


async def _publish(channel: Any, events: list[events_pb2.CloudEvent]) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    await stub.PublishBatch(events_pb2.PublishBatchRequest(events=events))


async def test_events_reach_an_sqs_queue_filtered_by_type(
    tmp_path: Path, moto_endpoint: str, sqs: Any
) -> None:
    url = (await sqs.create_queue(QueueName=f"mesh-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
    broker = {
        "kind": "sqs",
        "queue_url": url,
        "region": REGION,
        "endpoint_url": moto_endpoint,
        "types": ["task.*"],
    }
    settings = make_settings(tmp_path, **{"events.brokers": [broker]})
    async with running_server(settings) as srv, srv.channel() as ch:
        events = [cloud_event("task.submitted", f"t{i}", {"i": i}) for i in range(12)]
        events += [cloud_event("pipeline.run.started", "p") for _ in range(3)]
        await _publish(ch, events)
        bodies = await _drain(sqs, url, 12)
        assert await _drain(sqs, url, 0) == []
    assert sorted(b["data"]["i"] for b in bodies) == list(range(12))
    assert {b["type"] for b in bodies} == {"task.submitted"}
    assert all(b["specversion"] == "1.0" and b["tenant"] == "default" for b in bodies)


async def test_events_reach_sqs_through_an_eventbridge_rule(
    tmp_path: Path, moto_endpoint: str, sqs: Any, events: Any
) -> None:
    bus = f"mesh-{uuid.uuid4().hex[:8]}"
    await events.create_event_bus(Name=bus)
    url = (await sqs.create_queue(QueueName=f"{bus}-runs"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    await events.put_rule(
        Name="runs",
        EventBusName=bus,
        EventPattern=json.dumps({"detail-type": [{"prefix": "pipeline.run."}]}),
    )
    await events.put_targets(Rule="runs", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    broker = {
        "kind": "eventbridge",
        "bus_name": bus,
        "region": REGION,
        "endpoint_url": moto_endpoint,
    }
    settings = make_settings(tmp_path, **{"events.brokers": [broker]})
    async with running_server(settings) as srv, srv.channel() as ch:
        await _publish(
            ch,
            [cloud_event("pipeline.run.succeeded", f"run-{i}", {"i": i}) for i in range(11)]
            + [cloud_event("task.failed") for _ in range(4)],
        )
        bodies = await _drain(sqs, url, 11)
    details = [b["detail"] for b in bodies]
    assert sorted(d["data"]["i"] for d in details) == list(range(11))
    assert {b["detail-type"] for b in bodies} == {"pipeline.run.succeeded"}


async def test_broker_outage_degrades_health_and_delivers_after_recovery(
    tmp_path: Path, moto_endpoint: str, sqs: Any
) -> None:
    name = f"late-{uuid.uuid4().hex[:8]}"
    url = f"{moto_endpoint}/123456789012/{name}"
    broker = {
        "kind": "sqs",
        "queue_url": url,
        "region": REGION,
        "endpoint_url": moto_endpoint,
        "failure_threshold": 2,
        "recovery_time": 0.5,
    }
    settings = make_settings(tmp_path, **{"events.brokers": [broker]})
    async with running_server(settings) as srv, srv.channel() as ch:
        await _publish(ch, [cloud_event(subject=f"s{i}", data={"i": i}) for i in range(3)])
        health = health_pb2_grpc.HealthServiceStub(ch)
        request = health_pb2.GetHealthReportRequest(refresh=True)
        for _ in range(50):
            report = (await health.GetHealthReport(request)).report
            component = {c.name: c for c in report.components}[f"broker:sqs:{name}"]
            if component.status == health_pb2.COMPONENT_STATUS_DEGRADED:
                break
            await asyncio.sleep(0.1)
        assert component.status == health_pb2.COMPONENT_STATUS_DEGRADED
        assert report.serving[""]  # a broker is not critical
        (relay,) = srv.server.app.relays
        for _ in range(50):
            if relay.breaker.state.value != "closed":
                break
            await asyncio.sleep(0.1)
        assert relay.breaker.state.value in {"open", "half_open"}
        real = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        bodies = await _drain(sqs, real, 3, timeout=30)
    assert sorted(b["data"]["i"] for b in bodies) == [0, 1, 2]
