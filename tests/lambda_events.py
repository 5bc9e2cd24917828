"""Factories for Lambda events in the exact shapes AWS delivers them.

SQS: https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html (a batch of
``Records``, each with messageId, receiptHandle, body, attributes,
messageAttributes, md5OfBody, eventSource, eventSourceARN, awsRegion).
EventBridge: https://docs.aws.amazon.com/eventbridge/latest/ref/overiew-event-structure.html
(version, id, detail-type, source, account, time, region, resources, detail).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"


def queue_arn(name: str = "datamcp-tasks") -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def sqs_record(
    body: Any,
    *,
    message_id: str | None = None,
    queue: str = "datamcp-tasks",
    group_id: str | None = None,
    receive_count: int = 1,
    attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One SQS record; ``body`` that is not a string is sent as JSON."""
    text = body if isinstance(body, str) else json.dumps(body)
    now_ms = str(int(time.time() * 1000))
    attrs = {
        "ApproximateReceiveCount": str(receive_count),
        "SentTimestamp": now_ms,
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": now_ms,
    }
    if group_id is not None:
        attrs["MessageGroupId"] = group_id
        attrs["MessageDeduplicationId"] = hashlib.sha256(text.encode()).hexdigest()
        attrs["SequenceNumber"] = str(18849496460467696128 + int(time.time_ns() % 10**9))
    message_attributes = {
        name: {
            "stringValue": value,
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
        for name, value in (attributes or {}).items()
    }
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "AQEB" + uuid.uuid4().hex,
        "body": text,
        "attributes": attrs,
        "messageAttributes": message_attributes,
        "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn(queue),
        "awsRegion": REGION,
    }


def sqs_event(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"Records": [dict(r) for r in records]}


def task_body(
    capability: str = "echo",
    payload: Any = None,
    *,
    tenant: str = "default",
    request_id: str = "",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant": tenant, "capability": capability, "input": payload}
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return body


def eventbridge_event(
    detail_type: str,
    detail: Any,
    *,
    source: str = "datamcp",
    event_id: str | None = None,
    at: float | None = None,
    resources: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at or time.time())),
        "region": REGION,
        "resources": list(resources),
        "detail": detail,
    }


def mesh_cloudevent(
    event_type: str,
    data: Any,
    *,
    tenant: str = "default",
    event_id: str | None = None,
    subject: str = "",
    sequence: int = 0,
) -> dict[str, Any]:
    """The detail the EventBridge broker sends (``Event.to_cloudevent``)."""
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or uuid.uuid4().hex,
        "source": "/tests",
        "type": event_type,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "datacontenttype": "application/json",
        "data": data,
        "tenant": tenant,
    }
    if subject:
        out["subject"] = subject
    if sequence:
        out["sequence"] = sequence
    return out


def scheduled_event(
    at: float | None = None, rule: str = "datamcp-due", work: Sequence[str] | None = None
) -> dict[str, Any]:
    """A scheduled rule's event; ``work`` goes in the detail as the rule's input would."""
    detail: dict[str, Any] = {} if work is None else {"work": list(work)}
    return eventbridge_event(
        "Scheduled Event",
        detail,
        source="aws.events",
        at=at,
        resources=[f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"],
    )
