"""Forwards committed events to an SQS queue with ``SendMessageBatch``.

The body is the CloudEvents structured JSON; ``type`` and ``tenant`` are also
message attributes so consumers can route without parsing. For FIFO queues the
message group is the event's subject (falling back to its tenant): events about
one thing (a run, a dataset) stay in order while unrelated subjects are consumed
in parallel. The deduplication id is ``tenant:id``, the event's identity, so a
re-publish within SQS's five-minute window is dropped by SQS.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from datamcp.adapters.aws.session import (
    AwsConfig,
    AwsCredentials,
    EntryFailure,
    SharedClient,
    batches,
    deliver,
    delivery_error,
)
from datamcp.core.events.model import Event
from datamcp.core.resilience import RetryPolicy

MAX_ENTRIES = 10
#: SQS allowed 256 KB per batch until 2025 and 1 MiB since; the default keeps
#: to the older limit so queues in any region or emulator accept it.
DEFAULT_MAX_BATCH_BYTES = 256 * 1024
#: MessageGroupId / MessageDeduplicationId: 1-128 printable ASCII, no spaces.
FIFO_TOKEN_RE = re.compile(r"^[!-~]{1,128}$")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Entry:
    event: Event
    message: dict[str, Any]
    size: int


def fifo_token(raw: str) -> str:
    """``raw`` when SQS accepts it, else a digest of it. Replacing the bad
    characters instead could make two distinct ids equal, and SQS would then
    drop one event as a duplicate."""
    if FIFO_TOKEN_RE.match(raw):
        return raw
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def batch_failures(response: Mapping[str, Any], batch: Sequence[T]) -> list[EntryFailure[T]]:
    """The entries of a ``send_message_batch`` that SQS reports failed (entry
    ids are their positions in ``batch``), in batch order."""
    failed = sorted(response.get("Failed", ()), key=lambda f: int(f["Id"]))
    return [
        EntryFailure(batch[int(f["Id"])], str(f.get("Code")), not f.get("SenderFault"))
        for f in failed
    ]


class SqsQueue:
    """What every sender to one SQS queue keeps: its URL and name, whether it
    is FIFO, one long-lived client and the retry budget of a send."""

    def __init__(
        self,
        queue_url: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        credentials: AwsCredentials | None = None,
        max_attempts: int = 4,
        base_delay: float = 0.05,
        max_delay: float = 1.0,
    ) -> None:
        self.name = f"sqs:{queue_url.rstrip('/').rsplit('/', 1)[-1]}"
        self.fifo = queue_url.endswith(".fifo")
        self._url = queue_url
        self._client = SharedClient("sqs", AwsConfig(region, endpoint_url, credentials))
        self._retry = RetryPolicy(max_attempts, base_delay, max_delay)

    async def close(self) -> None:
        await self._client.close()


class SqsBroker(SqsQueue):
    """Publishes to ``queue_url``, 10 messages and ``max_batch_bytes`` per request.

    On FIFO queues batches go out one after another and the first batch that
    still fails stops the publish (the rest are reported ``NotAttempted``), so
    a later event never overtakes an earlier one of the same group.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        credentials: AwsCredentials | None = None,
        max_attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        super().__init__(
            queue_url,
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_delay=max_delay,
        )
        self._max_bytes = max_batch_bytes

    async def publish(self, events: Sequence[Event]) -> None:
        entries = [self._entry(event) for event in events]
        failed = [(e.event, "MessageTooLong") for e in entries if e.size > self._max_bytes]
        fits = [e for e in entries if e.size <= self._max_bytes]
        chunks = list(
            batches(fits, lambda e: e.size, max_count=MAX_ENTRIES, max_bytes=self._max_bytes)
        )
        sent_failed = await deliver(chunks, self._send, self._retry, stop_on_failure=self.fifo)
        failed += [(e.event, code) for e, code in sent_failed]
        if failed:
            raise delivery_error(self.name, events, failed)

    def _entry(self, event: Event) -> _Entry:
        body = json.dumps(event.to_cloudevent(), separators=(",", ":"))
        attributes = {
            name: {"DataType": "String", "StringValue": value}
            for name, value in (("type", event.type), ("tenant", event.tenant))
            if value  # SQS rejects empty attribute values
        }
        message: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
        if self.fifo:
            message["MessageGroupId"] = fifo_token(event.subject or event.tenant)
            message["MessageDeduplicationId"] = fifo_token(f"{event.tenant}:{event.id}")
        size = len(body.encode()) + sum(
            len(name) + len("String") + len(a["StringValue"].encode())
            for name, a in attributes.items()
        )
        return _Entry(event, message, size)

    async def _send(self, batch: list[_Entry]) -> list[EntryFailure[_Entry]]:
        client = await self._client.get()
        response = await client.send_message_batch(
            QueueUrl=self._url,
            Entries=[{"Id": str(i), **e.message} for i, e in enumerate(batch)],
        )
        return batch_failures(response, batch)
