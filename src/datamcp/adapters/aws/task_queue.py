"""The task queue on SQS: queued tasks as JSON messages (``QueuedTask.to_message``).

Standard queues take any order; on FIFO queues (``.fifo``) the message group
is the tenant plus the correlation id, so the tasks of one piece of work run
in order while unrelated work runs in parallel, and the deduplication id is
the task id (a resend within SQS's five minutes is dropped by SQS; later
ones are dropped by the consumer, which finds the task already ended).
"""

from __future__ import annotations

import json
from typing import Any

from datamcp.adapters.aws.session import EntryFailure, send_with_retries
from datamcp.adapters.aws.sqs import SqsQueue, batch_failures, fifo_token
from datamcp.core.agents.queued import QueuedTask
from datamcp.core.errors import FieldViolation, InvalidArgument, Unavailable

#: SQS's message size limit before 2025 (kept so any queue or emulator takes it).
MAX_MESSAGE_BYTES = 256 * 1024


class SqsTaskQueue(SqsQueue):
    """Sends each queued task as one message to its queue."""

    async def send(self, task: QueuedTask) -> None:
        body = json.dumps(task.to_message(), separators=(",", ":"))
        if len(body.encode()) > MAX_MESSAGE_BYTES:
            raise InvalidArgument(
                f"the task is {len(body.encode())} bytes as a queue message; queues take "
                f"{MAX_MESSAGE_BYTES}: send a smaller input, or run the task in-process",
                [FieldViolation("task.input", f"at most ~{MAX_MESSAGE_BYTES} bytes when queued")],
                reason="TASK_TOO_LARGE_FOR_QUEUE",
            )
        entry: dict[str, Any] = {
            "Id": "0",
            "MessageBody": body,
            "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": task.tenant}},
        }
        if self.fifo:
            group = f"{task.tenant}:{task.spec.correlation_id or task.task_id}"
            entry["MessageGroupId"] = fifo_token(group)
            entry["MessageDeduplicationId"] = fifo_token(task.task_id)
        failed, _ = await send_with_retries([entry], self._send, self._retry)
        if failed:
            raise Unavailable(
                f"{self.name}: the task could not be queued ({failed[0][1]}); nothing was stored",
                reason="TASK_QUEUE_UNAVAILABLE",
                metadata={"queue": self.name, "error_code": failed[0][1]},
            )

    async def _send(self, batch: list[dict[str, Any]]) -> list[EntryFailure[dict[str, Any]]]:
        client = await self._client.get()
        response = await client.send_message_batch(QueueUrl=self._url, Entries=batch)
        return batch_failures(response, batch)
