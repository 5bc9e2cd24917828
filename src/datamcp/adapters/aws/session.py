"""Client plumbing shared by the AWS brokers.

One long-lived client per broker (a client owns a connection pool and resolved
credentials, so one per publish would pay both every time), batching by count
and bytes, and one retry loop that knows which failures are worth retrying.
botocore's own retries are switched off so that the attempt budget is ours alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from datamcp.core.errors import Unavailable
from datamcp.core.events.model import Event
from datamcp.core.resilience import RetryPolicy

T = TypeVar("T")

#: Request-level error codes that a later attempt may not hit: throttling and
#: trouble on AWS's side. Anything else (missing queue, denied, invalid) is final.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalFailure",
        "InternalError",
        "InternalException",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """Where and as whom to call AWS. No credentials means botocore's usual chain
    (environment, profile, instance or task role); ``endpoint_url`` points at moto."""

    region: str
    endpoint_url: str | None = None
    credentials: AwsCredentials | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def session(self) -> aioboto3.Session:
        creds = self.credentials
        return aioboto3.Session(
            aws_access_key_id=creds.access_key_id if creds else None,
            aws_secret_access_key=creds.secret_access_key if creds else None,
            aws_session_token=creds.session_token if creds else None,
            region_name=self.region,
        )

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "region_name": self.region,
            "config": AioConfig(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                retries={"total_max_attempts": 1},
            ),
        }
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return kwargs


class SharedClient:
    """One client for a broker's lifetime: entered on first use, closed by ``close``."""

    def __init__(self, service: str, config: AwsConfig) -> None:
        self._service = service
        self._config = config
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def get(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    factory = self._config.session().client(
                        self._service, **self._config.client_kwargs()
                    )
                    self._client = await stack.enter_async_context(factory)
                    self._stack = stack
        return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


@dataclass(frozen=True, slots=True)
class EntryFailure(Generic[T]):
    item: T
    code: str
    retryable: bool


#: Sends one batch; returns the entries that failed, in request order.
SendBatch = Callable[[list[T]], Awaitable[list[EntryFailure[T]]]]


def classify(exc: BotoCoreError | ClientError) -> tuple[str, bool]:
    """(error code, worth retrying) for a whole-request failure."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "ClientError")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code, code in TRANSIENT_CODES or status == 429 or status >= 500
    return type(exc).__name__, isinstance(exc, HTTPClientError | BotoConnectionError)


async def send_with_retries(
    batch: list[T], send: SendBatch[T], retry: RetryPolicy
) -> tuple[list[tuple[T, str]], bool]:
    """Send ``batch``, resending retryable failures with backoff.

    Returns the items that still failed with their last error code, and whether
    the request itself failed for good (so later batches would fail the same way).
    """
    failed: list[tuple[T, str]] = []
    pending = batch
    retrying: list[EntryFailure[T]] = []
    for attempt in range(1, retry.max_attempts + 1):
        try:
            results = await send(pending)
        except (BotoCoreError, ClientError) as exc:
            code, transient = classify(exc)
            if not transient:
                return [*failed, *((item, code) for item in pending)], True
            results = [EntryFailure(item, code, True) for item in pending]
        failed += [(f.item, f.code) for f in results if not f.retryable]
        retrying = [f for f in results if f.retryable]
        pending = [f.item for f in retrying]
        if not pending:
            break
        if attempt < retry.max_attempts:
            await asyncio.sleep(retry.delay(attempt))
    return [*failed, *((f.item, f.code) for f in retrying)], False


async def deliver(
    batches: Sequence[list[T]], send: SendBatch[T], retry: RetryPolicy, *, stop_on_failure: bool
) -> list[tuple[T, str]]:
    """Send batches in order. After a final request error, or any failure when
    ``stop_on_failure`` (ordered queues), the rest are reported ``NotAttempted``."""
    failed: list[tuple[T, str]] = []
    for index, batch in enumerate(batches):
        batch_failed, fatal = await send_with_retries(batch, send, retry)
        failed += batch_failed
        if fatal or (stop_on_failure and batch_failed):
            failed += [(item, "NotAttempted") for rest in batches[index + 1 :] for item in rest]
            break
    return failed


def batches(
    items: Sequence[T], size: Callable[[T], int], *, max_count: int, max_bytes: int
) -> Iterator[list[T]]:
    """Consecutive runs of at most ``max_count`` items and ``max_bytes`` in total.
    An item bigger than ``max_bytes`` on its own must be filtered out first."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) == max_count or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def delivery_error(
    broker: str, events: Sequence[Event], failed: list[tuple[Event, str]]
) -> Unavailable:
    """The error for a partly failed publish: failed ids in publish order and
    their codes, so the caller can record and retry exactly those events."""
    codes = {id(event): code for event, code in failed}
    ordered = [(event, codes[id(event)]) for event in events if id(event) in codes]
    return Unavailable(
        f"{broker}: {len(ordered)} of {len(events)} events not delivered",
        reason="BROKER_PUBLISH_FAILED",
        metadata={
            "broker": broker,
            "failed_event_ids": json.dumps([event.id for event, _ in ordered]),
            "error_codes": json.dumps({event.id: code for event, code in ordered}),
        },
    )
