"""Forwards committed events to an EventBridge bus with ``PutEvents``.

Each entry's ``Source`` is the configured constant ``source_prefix``, not the
CloudEvents ``source``: that one is a URI reference of up to 512 arbitrary
characters, while EventBridge's Source is shorter, reserves ``aws.*`` and is
what rules match on, so a stable value is easier to route by. The CloudEvents
source (and every other attribute) is still in ``detail``; ``DetailType`` is
the event type, so rules select with ``{"detail-type": ["pipeline.run.succeeded"]}``
or ``{"detail-type": [{"prefix": "pipeline.run."}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
MAX_REQUEST_BYTES = 256 * 1024
#: The size EventBridge counts for a ``Time`` field.
TIME_BYTES = 14
#: Entry error codes that a retry cannot fix; other codes (throttling,
#: InternalFailure, ...) are retried.
PERMANENT_CODES = frozenset(
    {
        "MalformedDetail",
        "InvalidArgument",
        "ValidationException",
        "AccessDeniedException",
        "NotAuthorizedForSourceException",
    }
)


@dataclass(frozen=True, slots=True)
class _Entry:
    event: Event
    request: dict[str, Any]
    size: int


class EventBridgeBroker:
    """Publishes to ``bus_name`` (a name or ARN), 10 entries and 256 KB per request."""

    def __init__(
        self,
        bus_name: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        credentials: AwsCredentials | None = None,
        source_prefix: str = "datamcp",
        max_attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
    ) -> None:
        self.name = f"eventbridge:{bus_name}"
        self._bus = bus_name
        self._source = source_prefix
        self._client = SharedClient("events", AwsConfig(region, endpoint_url, credentials))
        self._retry = RetryPolicy(max_attempts, base_delay, max_delay)

    async def publish(self, events: Sequence[Event]) -> None:
        entries = [self._entry(event) for event in events]
        failed = [(e.event, "EntryTooLarge") for e in entries if e.size > MAX_REQUEST_BYTES]
        fits = [e for e in entries if e.size <= MAX_REQUEST_BYTES]
        chunks = list(
            batches(fits, lambda e: e.size, max_count=MAX_ENTRIES, max_bytes=MAX_REQUEST_BYTES)
        )
        sent_failed = await deliver(chunks, self._put, self._retry, stop_on_failure=False)
        failed += [(e.event, code) for e, code in sent_failed]
        if failed:
            raise delivery_error(self.name, events, failed)

    async def close(self) -> None:
        await self._client.close()

    def _entry(self, event: Event) -> _Entry:
        detail = json.dumps(event.to_cloudevent(), separators=(",", ":"))
        request: dict[str, Any] = {
            "Source": self._source,
            "DetailType": event.type,
            "Detail": detail,
            "EventBusName": self._bus,
        }
        size = sum(len(request[k].encode()) for k in ("Source", "DetailType", "Detail"))
        if event.time:
            request["Time"] = datetime.fromtimestamp(event.time, tz=UTC)
            size += TIME_BYTES
        return _Entry(event, request, size)

    async def _put(self, batch: list[_Entry]) -> list[EntryFailure[_Entry]]:
        client = await self._client.get()
        response = await client.put_events(Entries=[e.request for e in batch])
        if not response.get("FailedEntryCount"):
            return []
        failures: list[EntryFailure[_Entry]] = []
        for entry, result in zip(batch, response["Entries"], strict=True):
            code = result.get("ErrorCode")
            if code:
                failures.append(EntryFailure(entry, str(code), code not in PERMANENT_CODES))
        return failures
