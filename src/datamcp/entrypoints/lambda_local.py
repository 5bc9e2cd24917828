"""``datamcp lambda-local``: an SQS event source mapping on your machine.

Polls a queue (moto, LocalStack or real SQS) and invokes the Lambda
handlers in-process with events in the exact Lambda shape, then does what
the event source mapping does with the answer:

- ``--function tasks``: each receive is one SQS batch event for
  ``handlers.tasks.handler``; messages not listed in ``batchItemFailures``
  are deleted, the others become visible again after the queue's
  visibility timeout (and move to the dead-letter queue by its redrive
  policy). A handler error leaves the whole batch.
- ``--function events``: each message body is an EventBridge event (what an
  EventBridge rule with an SQS target delivers); each goes to
  ``handlers.events.handler`` and is deleted when it returns.

The handlers build the app from ``DATAMCP_*`` variables, as in Lambda.
Like Lambda's runtime, this runner finds a handler by its name (the
template's ``Handler``) when it runs: the ``handlers`` package is built on
``datamcp``, and ``datamcp`` never imports it (``make imports``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("datamcp.lambda_local")

Handler = Callable[[Any, Any], Any]

#: Each function's handler, as infra/sam/template.yaml names it.
HANDLERS: Mapping[str, str] = {
    "tasks": "handlers.tasks.handler",
    "events": "handlers.events.handler",
}
#: The handlers' runtime: the context of a local invocation, and shutdown.
RUNTIME = "handlers._runtime"


def load(name: str) -> Any:
    """``package.module.attribute`` imported by name, as Lambda loads a handler."""
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lambda-local", help="poll an SQS queue and invoke the Lambda handlers")
    p.add_argument("--queue-url", required=True, help="the queue to poll")
    p.add_argument("--function", choices=tuple(HANDLERS), default="tasks")
    p.add_argument("--endpoint-url", help="SQS endpoint (moto: http://127.0.0.1:5000)")
    p.add_argument("--region", help="AWS region (default AWS_REGION or us-east-1)")
    p.add_argument("--batch-size", type=int, default=10, help="messages per receive (1-10)")
    p.add_argument("--wait", type=int, default=2, help="long-poll seconds per receive (0-20)")
    p.add_argument("--timeout", type=float, default=30.0, help="function timeout in seconds")
    p.add_argument("--until-empty", action="store_true", help="stop after an empty receive")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import os

    region = args.region or os.environ.get("AWS_REGION") or "us-east-1"
    if not 1 <= args.batch_size <= 10 or not 0 <= args.wait <= 20:
        print("lambda-local: --batch-size is 1-10 and --wait 0-20", flush=True)
        return 2
    shutdown = load(f"{RUNTIME}.shutdown")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    poller = Poller(
        args.queue_url,
        function=args.function,
        region=region,
        endpoint_url=args.endpoint_url,
        batch_size=args.batch_size,
        wait=args.wait,
        timeout=args.timeout,
    )
    try:
        poller.run(stop, until_empty=args.until_empty)
    finally:
        shutdown()
    return 0


class Poller:
    def __init__(
        self,
        queue_url: str,
        *,
        function: str = "tasks",
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        batch_size: int = 10,
        wait: int = 2,
        timeout: float = 30.0,
    ) -> None:
        import boto3

        self._url = queue_url
        self._function = function
        self._region = region
        self._batch = batch_size
        self._wait = wait
        self._timeout = timeout
        self._handler: Handler = load(HANDLERS[function])
        self._context: Callable[[float], Any] = load(f"{RUNTIME}.LocalContext")
        self._sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
        self._arn = self._sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.received = 0
        self.deleted = 0

    def run(self, stop: threading.Event, *, until_empty: bool = False) -> None:
        while not stop.is_set():
            if not self.poll_once() and until_empty:
                return

    def poll_once(self) -> int:
        """One receive and its invocations; returns how many messages came."""
        reply = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=self._batch,
            WaitTimeSeconds=self._wait,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        if not messages:
            return 0
        self.received += len(messages)
        done = self._tasks(messages) if self._function == "tasks" else self._events(messages)
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
            self.deleted += len(done)
        summary = {"function": self._function, "received": len(messages), "deleted": len(done)}
        print(json.dumps(summary), flush=True)
        return len(messages)

    def _tasks(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        event = {"Records": [sqs_record(m, self._arn, self._region) for m in messages]}
        try:
            answer = self._handler(event, self._context(self._timeout))
        except Exception:
            log.exception("the tasks handler failed; the whole batch stays on the queue")
            return []
        failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
        return [m for m in messages if m["MessageId"] not in failed]

    def _events(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done = []
        for message in messages:
            try:
                self._handler(json.loads(message["Body"]), self._context(self._timeout))
            except Exception:
                log.exception("the events handler failed", extra={"id": message["MessageId"]})
            else:
                done.append(message)
        return done


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A received message as Lambda's SQS event source puts it in ``Records``."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": list(value.get("BinaryListValues", [])),
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        import base64

        out["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    return out
