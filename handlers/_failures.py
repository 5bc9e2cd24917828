"""Which failures are worth retrying, and dead letters for those that are not.

A **permanent** failure is one no retry can fix: invalid input (an unknown
capability in a trigger, a message that is not a task, bad data), something
missing or refused, invalid configuration, a malformed event. Retrying it
only burns Lambda's retries or the queue's receive count and delays the
verdict. Such a record or event is recorded (an ERROR line with the reason,
the ``RecordsDeadLettered`` metric) and sent **once** to the function's
dead-letter queue (``serverless.dead_letter_queue_url``), then answered as
done. Everything else (the database or AWS unavailable, a task busy
elsewhere or out of time, a precondition that may change, the unexpected)
is **transient** and fails, so the event source retries it; the dead-letter
queue gets those too once the retries are used up (the queue's redrive
policy, the function's on-failure destination).

What a letter holds: for an SQS record, its body unchanged (so the dead-letter
queue can redrive it to the task queue as is) with attributes saying why; for
an asynchronous invocation (EventBridge), the record Lambda's own on-failure
destination writes (``requestPayload``, ``responsePayload``...), with
``condition`` ``PermanentError``, so one tool reads both.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datamcp.core.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from handlers import _runtime, _telemetry

if TYPE_CHECKING:
    from datamcp.adapters.aws.dead_letters import Letter
    from datamcp.bootstrap import App

log = logging.getLogger("datamcp.handlers")

PERMANENT: tuple[type[BaseException], ...] = (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ConfigError,
    ValueError,  # a malformed event or message
)
#: Preconditions no retry in this container changes: what its package left out.
PERMANENT_REASONS = frozenset({"PIPELINE_ENGINE_MISSING"})
#: Error text kept in a letter's attributes (SQS attributes are small).
MAX_ERROR = 1000


def permanent(exc: BaseException) -> bool:
    if isinstance(exc, FailedPrecondition):
        return exc.reason in PERMANENT_REASONS
    return isinstance(exc, PERMANENT)


def reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or type(exc).__name__)


def describe(exc: BaseException) -> str:
    """The error for a reader: the core's message and field violations."""
    text = str(getattr(exc, "message", "") or exc)
    violations = getattr(exc, "violations", ())
    if violations:
        text += ": " + "; ".join(f"{v.field}: {v.description}" for v in violations)
    return text[:MAX_ERROR]


def record_letter(record: Mapping[str, Any], exc: BaseException) -> Letter:
    """An SQS record as a dead letter: its body as is, why in attributes."""
    from datamcp.adapters.aws.dead_letters import Letter

    ours = {
        "datamcp-error": describe(exc),
        "datamcp-reason": reason(exc),
        "datamcp-source-message-id": str(record["messageId"]),
        "datamcp-source-queue": str(record.get("eventSourceARN", "")),
    }
    theirs = {
        name: str(value.get("stringValue"))
        for name, value in (record.get("messageAttributes") or {}).items()
        if isinstance(value, Mapping) and value.get("dataType") == "String"
    }
    attributes = {**ours, **{k: v for k, v in theirs.items() if k not in ours}}
    sqs_attributes = record.get("attributes") or {}
    return Letter(
        id=str(record["messageId"]),
        body=str(record["body"]),
        attributes=attributes,
        group=str(sqs_attributes.get("MessageGroupId", "")),
    )


def invocation_letter(event: Any, exc: BaseException, context: Any) -> Letter:
    """An asynchronous invocation's event as Lambda's on-failure destination
    would record it, with condition ``PermanentError``."""
    from datamcp.adapters.aws.dead_letters import Letter

    request_id = str(getattr(context, "aws_request_id", ""))
    body = {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "requestContext": {
            "requestId": request_id,
            "functionArn": str(getattr(context, "invoked_function_arn", "")),
            "condition": "PermanentError",
            "approximateInvokeCount": 1,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "functionError": "Handled"},
        "responsePayload": {
            "errorType": type(exc).__name__,
            "errorMessage": describe(exc),
            "reason": reason(exc),
        },
    }
    return Letter(
        id=request_id or str(time.time_ns()),
        body=json.dumps(body, default=str),
        attributes={"datamcp-reason": reason(exc), "datamcp-error": describe(exc)},
    )


async def give_up(app: App, event: Any, exc: Exception, context: Any) -> dict[str, Any]:
    """An asynchronous invocation that failed for good: its letter to the
    dead-letter queue, and an answer, so Lambda does not retry it. When the
    letter cannot be sent (no queue configured, SQS down) ``exc`` is raised:
    Lambda's retries and on-failure destination take over, nothing is lost."""
    not_sent = await _runtime.dead_letter(app, [invocation_letter(event, exc, context)])
    if not_sent:
        _telemetry.count(failed=1)
        raise exc
    log.error(
        "event failed for good; sent to the dead letters",
        extra={"reason": reason(exc), "error": describe(exc)},
    )
    _telemetry.count(dead_lettered=1)
    return {"dead_lettered": True, "reason": reason(exc), "error": describe(exc)}


def refuse(event: Any, exc: Exception, context: Any) -> dict[str, Any]:
    """``give_up`` for an event rejected before any work started."""

    async def work(app: App, _deadline: float) -> dict[str, Any]:
        return await give_up(app, event, exc, context)

    return _runtime.invoke(work, context)


async def settle_records(
    app: App, batch: Sequence[Mapping[str, Any]], failures: dict[str, Exception | None]
) -> list[str]:
    """Send the records that failed for good to the dead letters; returns the
    message ids to report failed (transient failures, and permanent ones whose
    letter could not be sent)."""
    letters = [
        record_letter(r, exc)
        for r in batch
        if (exc := failures.get(r["messageId"])) is not None and permanent(exc)
    ]
    not_sent = {mid for mid, _ in await _runtime.dead_letter(app, letters)}
    for letter in letters:
        if letter.id not in not_sent:
            log.error(
                "record failed for good; sent to the dead letters",
                extra={
                    "message_id": letter.id,
                    "reason": letter.attributes["datamcp-reason"],
                    "error": letter.attributes["datamcp-error"],
                },
            )
    dead = {letter.id for letter in letters} - not_sent
    failed = [mid for mid in failures if mid not in dead]
    _telemetry.count(
        processed=len(batch) - len(failures), failed=len(failed), dead_lettered=len(dead)
    )
    return failed
