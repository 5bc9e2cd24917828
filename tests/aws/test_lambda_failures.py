"""Nothing an event source hands the handlers is lost, against a moto server:
a record or event that can never succeed goes once to the function's
dead-letter queue (and is not retried), a transient failure is retried, and
when the dead letters cannot be written the failure stays with the event
source."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from datamcp.core.errors import Unavailable
from handlers import _runtime, events, schedule, tasks
from tests.agent_plugins import PLUGINS
from tests.aws.test_lambda_queue import make_queue
from tests.lambda_events import (
    eventbridge_event,
    mesh_cloudevent,
    scheduled_event,
    sqs_event,
    sqs_record,
    task_body,
)

TRIGGERS = [
    {
        "name": "bad-capability",
        "types": ["order.created"],
        "action": "agent.submit_task",
        "params": {"capability": "no.such.capability"},
    }
]


@pytest.fixture
async def dead_letters(
    moto_endpoint: str, sqs: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A container configured as the SAM template does, with its own DLQ."""
    url, _ = await make_queue(sqs, f"dlq-{uuid.uuid4().hex[:8]}")
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "DATAMCP_DATABASE_URL": database_url,
        "DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS),
        "DATAMCP_EVENTS_TRIGGERS": json.dumps(TRIGGERS),
        "DATAMCP_SERVERLESS_DEAD_LETTER_QUEUE_URL": url,
        "DATAMCP_LOGGING_LEVEL": "WARNING",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield url
    finally:
        await asyncio.to_thread(_runtime.shutdown)


async def letters(sqs: Any, url: str) -> list[dict[str, Any]]:
    got = await sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    return list(got.get("Messages", []))


def attribute(message: dict[str, Any], name: str) -> str:
    return str(message["MessageAttributes"][name]["StringValue"])


async def test_records_that_can_never_succeed_go_once_to_the_dead_letters(
    dead_letters: str, sqs: Any
) -> None:
    good = sqs_record(task_body("echo", 1, request_id="fine"))
    not_json = sqs_record("{nope", attributes={"origin": "billing"})
    unknown = sqs_record(task_body("no.such", 1, request_id="unknown"))
    slow = sqs_record(task_body("test.slow", {"seconds": 5}, request_id="slow", timeout=10))
    event = sqs_event([good, not_json, unknown, slow])
    context = _runtime.LocalContext(2.0)  # the slow one runs out of time: transient
    answer = await asyncio.to_thread(tasks.handler, event, context)
    assert answer == {"batchItemFailures": [{"itemIdentifier": slow["messageId"]}]}
    dead = {attribute(m, "datamcp-source-message-id"): m for m in await letters(sqs, dead_letters)}
    assert set(dead) == {not_json["messageId"], unknown["messageId"]}
    # The body is the original, so the DLQ can redrive it to the task queue as is.
    assert dead[not_json["messageId"]]["Body"] == "{nope"
    assert attribute(dead[not_json["messageId"]], "origin") == "billing"
    assert attribute(dead[not_json["messageId"]], "datamcp-reason") == "ValueError"
    why = dead[unknown["messageId"]]
    assert json.loads(why["Body"]) == json.loads(unknown["body"])
    assert attribute(why, "datamcp-reason") == "INVALID_TASK"
    assert "no agent offers 'no.such'" in attribute(why, "datamcp-error")
    assert attribute(why, "datamcp-source-queue") == unknown["eventSourceARN"]


async def test_without_reachable_dead_letters_the_failure_stays_with_the_queue(
    dead_letters: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DATAMCP_SERVERLESS_DEAD_LETTER_QUEUE_URL", f"{moto_endpoint}/123456789012/gone"
    )
    bad = sqs_record("{nope")
    answer = await asyncio.to_thread(tasks.handler, sqs_event([bad]), _runtime.LocalContext(10))
    assert answer == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}


async def test_an_event_that_can_never_succeed_is_dead_lettered_not_retried(
    dead_letters: str, sqs: Any
) -> None:
    event = eventbridge_event("order.created", mesh_cloudevent("order.created", {"n": 1}))
    context = _runtime.LocalContext(10)
    answer = await asyncio.to_thread(events.handler, event, context)
    assert answer["dead_lettered"] is True and answer["reason"] == "INVALID_TASK"
    malformed = {"detail-type": "x"}  # no id, no detail: not an EventBridge event
    answer = await asyncio.to_thread(events.handler, malformed, context)
    assert answer["reason"] == "ValueError"
    got = [json.loads(m["Body"]) for m in await letters(sqs, dead_letters)]
    assert [g["requestPayload"] for g in got] == [event, malformed]
    first = got[0]
    assert first["requestContext"]["condition"] == "PermanentError"
    assert first["responsePayload"]["reason"] == "INVALID_TASK"
    assert "no.such.capability" in first["responsePayload"]["errorMessage"]


async def test_a_tick_naming_unknown_work_is_dead_lettered(dead_letters: str, sqs: Any) -> None:
    context = _runtime.LocalContext(10)
    unknown = scheduled_event(work=["nope"])
    answer = await asyncio.to_thread(schedule.handler, unknown, context)
    assert answer["reason"] == "UNKNOWN_DUE_WORK"
    answer = await asyncio.to_thread(schedule.handler, {"work": "nope"}, context)
    assert answer["reason"] == "ValueError"
    got = [json.loads(m["Body"])["requestPayload"] for m in await letters(sqs, dead_letters)]
    assert got == [unknown, {"work": "nope"}]


async def test_a_transient_failure_is_raised_for_lambda_to_retry(
    dead_letters: str, sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAMCP_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    event = eventbridge_event("order.created", mesh_cloudevent("order.created", {"n": 1}))
    with pytest.raises(Unavailable):
        await asyncio.to_thread(events.handler, event, _runtime.LocalContext(10))
    assert await letters(sqs, dead_letters) == []
