"""SQS batches as Lambda delivers them, and partial batch failure answers.

Records of a standard queue are independent and processed concurrently. On
a FIFO queue the records of one message group are processed in order, one
after another, and the first failure fails the rest of that group (SQS then
redelivers them after it, keeping the order); other groups go on. The answer
lists the failed message ids in ``batchItemFailures`` (the event source
mapping needs ``ReportBatchItemFailures``); an event that is not an SQS
batch at all is an error for the whole invocation.

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


async def process(batch: Sequence[Record], work: Work) -> list[str]:
    """Run ``work`` for each record; returns the message ids that failed."""
    if batch and is_fifo(batch[0]):
        groups: dict[str, list[Record]] = {}
        for record in batch:
            groups.setdefault(group_of(record), []).append(record)
        results = await asyncio.gather(*(_in_order(g, work) for g in groups.values()))
        failed = {mid for group_failed in results for mid in group_failed}
    else:
        outcomes = await asyncio.gather(*(_one(r, work) for r in batch))
        failed = {r["messageId"] for r, ok in zip(batch, outcomes, strict=True) if not ok}
    return [r["messageId"] for r in batch if r["messageId"] in failed]


async def _in_order(group: Sequence[Record], work: Work) -> list[str]:
    for index, record in enumerate(group):
        if not await _one(record, work):
            return [r["messageId"] for r in group[index:]]
    return []


async def _one(record: Record, work: Work) -> bool:
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
        return False
    return True


def answer(failed: Sequence[str]) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": mid} for mid in failed]}
