"""SQS batches as Lambda delivers them, and partial batch failure answers.

Records of a standard queue are independent and processed concurrently. On
a FIFO queue the records of one message group are processed in order, one
after another, and the first failure fails the rest of that group (SQS then
redelivers them after it, keeping the order); other groups go on. The answer
lists the failed message ids in ``batchItemFailures`` (the event source
mapping needs ``ReportBatchItemFailures``); an event that is not an SQS
batch at all is an error for the whole invocation. Each failure comes back
with its cause (None for the rest of a FIFO group, not attempted), so the
handler can tell permanent failures from transient ones.

Written here rather than with Powertools' batch utilities: their processors
drive async record handlers with their own ``asyncio.run``-style loop
management, while these handlers must reuse the container's loop; the
protocol itself is this small (see docs/serverless.md for the measurement).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("datamcp.handlers")

Record = Mapping[str, Any]
Work = Callable[[Record], Awaitable[None]]
#: Failed message id -> why (None: not attempted, behind a failure in its FIFO group).
Failures = dict[str, Exception | None]


def records(event: Any) -> list[Record]:
    """The records of an SQS event.

    Raises:
        ValueError: the event is not an SQS batch (fails the whole invocation).
    """
    if not isinstance(event, Mapping) or not isinstance(event.get("Records"), list):
        raise ValueError("not an SQS event: expected an object with a Records list")
    out: list[Record] = []
    for i, record in enumerate(event["Records"]):
        if (
            not isinstance(record, Mapping)
            or record.get("eventSource") != "aws:sqs"
            or not isinstance(record.get("messageId"), str)
            or not isinstance(record.get("body"), str)
        ):
            raise ValueError(f"Records[{i}] is not an SQS record (eventSource, messageId, body)")
        out.append(record)
    return out


def is_fifo(record: Record) -> bool:
    return str(record.get("eventSourceARN", "")).endswith(".fifo") or bool(
        _attributes(record).get("MessageGroupId")
    )


def group_of(record: Record) -> str:
    return str(_attributes(record).get("MessageGroupId", ""))


def _attributes(record: Record) -> Mapping[str, Any]:
    attributes = record.get("attributes")
    return attributes if isinstance(attributes, Mapping) else {}


async def process(batch: Sequence[Record], work: Work) -> Failures:
    """Run ``work`` for each record; returns the failed ones, in batch order."""
    failed: Failures = {}
    if batch and is_fifo(batch[0]):
        groups: dict[str, list[Record]] = {}
        for record in batch:
            groups.setdefault(group_of(record), []).append(record)
        for group_failed in await asyncio.gather(*(_in_order(g, work) for g in groups.values())):
            failed.update(group_failed)
    else:
        outcomes = await asyncio.gather(*(_one(r, work) for r in batch))
        failed = {r["messageId"]: exc for r, exc in zip(batch, outcomes, strict=True) if exc}
    return {r["messageId"]: failed[r["messageId"]] for r in batch if r["messageId"] in failed}


async def _in_order(group: Sequence[Record], work: Work) -> Failures:
    for index, record in enumerate(group):
        exc = await _one(record, work)
        if exc is not None:
            rest: Failures = {r["messageId"]: None for r in group[index + 1 :]}
            return {record["messageId"]: exc, **rest}
    return {}


async def _one(record: Record, work: Work) -> Exception | None:
    try:
        await work(record)
    except Exception as exc:
        log.warning(
            "record failed",
            extra={
                "message_id": record["messageId"],
                "error": f"{type(exc).__name__}: {exc}",
                "reason": getattr(exc, "reason", ""),
            },
        )
        return exc
    return None


def answer(failed: Sequence[str]) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": mid} for mid in failed]}
