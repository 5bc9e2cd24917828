"""The Lambda handlers' dead-letter queue on SQS (``serverless.dead_letter_queue_url``).

Where a record or event that can never succeed goes, once, instead of being
retried until a redrive policy or Lambda's retry budget gives up. A letter is
a message body and string attributes (why it failed); on a FIFO queue it
keeps its message group and is deduplicated by its id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.adapters.aws.session import EntryFailure, batches, deliver
from datamcp.adapters.aws.sqs import MAX_ENTRIES, SqsQueue, batch_failures, fifo_token

#: SQS takes at most 10 attributes per message and 256 KiB per batch (the
#: older limit, which every queue and emulator accepts).
MAX_ATTRIBUTES = 10
MAX_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Letter:
    id: str
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    group: str = ""


class SqsDeadLetters(SqsQueue):
    """Sends letters in batches of 10 (or 256 KiB), retrying what SQS says may pass later."""

    async def send(self, letters: Sequence[Letter]) -> list[tuple[str, str]]:
        """Send every letter; returns (id, error code) of those that could not be."""
        entries = [(letter, self._message(letter)) for letter in letters]
        too_big = [(lt.id, "MessageTooLong") for lt, m in entries if _size(m) > MAX_BATCH_BYTES]
        fits = [(lt, m) for lt, m in entries if _size(m) <= MAX_BATCH_BYTES]
        chunks = list(
            batches(fits, lambda e: _size(e[1]), max_count=MAX_ENTRIES, max_bytes=MAX_BATCH_BYTES)
        )
        failed = await deliver(chunks, self._send, self._retry, stop_on_failure=False)
        return too_big + [(lt.id, code) for (lt, _), code in failed]

    def _message(self, letter: Letter) -> dict[str, Any]:
        attributes = {
            name: {"DataType": "String", "StringValue": value}
            for name, value in list(letter.attributes.items())[:MAX_ATTRIBUTES]
            if value  # SQS rejects empty values
        }
        message: dict[str, Any] = {"MessageBody": letter.body, "MessageAttributes": attributes}
        if self.fifo:
            message["MessageGroupId"] = fifo_token(letter.group or letter.id)
            message["MessageDeduplicationId"] = fifo_token(letter.id)
        return message

    async def _send(
        self, batch: list[tuple[Letter, dict[str, Any]]]
    ) -> list[EntryFailure[tuple[Letter, dict[str, Any]]]]:
        client = await self._client.get()
        response = await client.send_message_batch(
            QueueUrl=self._url,
            Entries=[{"Id": str(i), **message} for i, (_, message) in enumerate(batch)],
        )
        return batch_failures(response, batch)


def _size(message: Mapping[str, Any]) -> int:
    return len(str(message["MessageBody"]).encode()) + sum(
        len(name) + len("String") + len(a["StringValue"].encode())
        for name, a in message["MessageAttributes"].items()
    )
