"""``handlers.tasks.handler``: SQS batches of task submissions, run to the end.

Each record's body is a JSON task submission (``QueuedTask.to_message``)::

    {"tenant": "acme", "capability": "echo", "input": {"hello": "world"},
     "request_id": "job-1", "timeout": 30}

The task is stored (or claimed, when a server stored it in queued mode) and
run on this container's agents before the invocation returns, within the
invocation's remaining time. A record fails (and SQS redelivers it later)
when the store is down, a live process is running the same task, or the
task did not finish in time (it is handed back). A message that can never
become a task (not JSON, bad fields, an unknown capability, a timeout longer
than the function allows) is sent once to the dead-letter queue and not
retried (``_failures``). A task that ran and failed is a processed record:
its failure is in its state. Redeliveries of a finished task do nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from datamcp.core.agents.queued import QueuedTask
from handlers import _failures, _runtime, _sqs, _telemetry

if TYPE_CHECKING:
    from datamcp.bootstrap import App


@_telemetry.observed("tasks", _runtime.local_context)
def handler(event: Any, context: _runtime.LambdaContext | None) -> dict[str, Any]:
    batch = _sqs.records(event)

    async def work(app: App, deadline: float) -> dict[str, Any]:
        queued = app.agents.queued_tasks

        async def one(record: _sqs.Record) -> None:
            message = QueuedTask.from_message(_body(record), record["messageId"])
            await queued.run(message, within=_runtime.remaining(deadline))

        failures = await _sqs.process(batch, one)
        return _sqs.answer(await _failures.settle_records(app, batch, failures))

    return _runtime.invoke(work, context)


def _body(record: _sqs.Record) -> Any:
    try:
        return json.loads(record["body"])
    except ValueError as exc:
        raise ValueError(f"message {record['messageId']} body is not JSON: {exc}") from None
