"""One connection's call machinery: metadata, deadlines, typed errors, retries.

Every sub-client calls through :class:`Connection`, so turning transport
errors into typed exceptions and deciding what may be retried happen in one
place.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio

from datamcp_client.errors import (
    ResourceExhaustedError,
    RPCError,
    UnavailableError,
    from_rpc_error,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How idempotent calls are retried.

    Only calls that are safe to repeat are retried: reads, and writes the
    client made idempotent (a task or run with a request id, an event with an
    id). UNAVAILABLE is retried with jittered exponential backoff;
    RESOURCE_EXHAUSTED only when the server sent ``RetryInfo``, after the
    delay it asked for (at most ``max_retry_delay``).

    Attributes:
        max_attempts: attempts in all, the first included (1 = never retry).
        initial_backoff: seconds before the first retry of UNAVAILABLE.
        max_backoff: longest backoff between attempts.
        max_retry_delay: a ``RetryInfo`` delay longer than this is not waited
            for; the error is raised instead.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    max_retry_delay: float = 30.0

    def delay(self, error: RPCError, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if isinstance(error, ResourceExhaustedError):
            if error.retry_delay is None or error.retry_delay > self.max_retry_delay:
                return None
            return error.retry_delay
        if isinstance(error, UnavailableError):
            if error.retry_delay is not None:
                return min(error.retry_delay, self.max_retry_delay)
            ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))
            return random.uniform(ceiling / 2, ceiling)
        return None


NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_RETRY = RetryPolicy()


class _Default(enum.Enum):
    TIMEOUT = 0


DEFAULT = _Default.TIMEOUT
"""Use the connection's default deadline."""


class Connection:
    """A channel plus what every call sends: credentials, deadline, retry policy."""

    def __init__(
        self,
        channel: aio.Channel,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.channel = channel
        self.metadata = tuple(metadata)
        self.timeout = timeout
        self.retry = retry

    async def unary(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        idempotent: bool,
        timeout: float | Literal[_Default.TIMEOUT] | None = DEFAULT,
    ) -> Resp:
        """Call a unary method; typed errors; retries when ``idempotent``."""
        deadline = self.timeout if timeout is DEFAULT else timeout
        attempt = 1
        while True:
            try:
                return await method(request, timeout=deadline, metadata=self.metadata)
            except aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                wait = self.retry.delay(error, attempt) if idempotent else None
                if wait is None:
                    raise error from exc
            await asyncio.sleep(wait)
            attempt += 1

    async def stream(self, call: Any) -> AsyncIterator[Any]:
        """Iterate a server stream, raising typed errors."""
        try:
            async for item in call:
                yield item
        except aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A Timestamp as an aware UTC datetime; None when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


def to_seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def fill_duration(target: duration_pb2.Duration, seconds: float) -> None:
    target.FromNanoseconds(round(seconds * 1e9))


def fill_timestamp(target: timestamp_pb2.Timestamp, when: datetime) -> None:
    if when.tzinfo is None:
        raise ValueError("datetime must be timezone-aware (for example datetime.now(UTC))")
    target.FromDatetime(when)


def enum_name(value: int, enum: Any, prefix: str) -> str:
    """``TASK_STATE_RUNNING`` -> ``RUNNING`` (the proto prefix dropped)."""
    return str(enum.Name(value)).removeprefix(prefix)


def enum_value(name: str, enum: Any, prefix: str) -> int:
    """``running`` / ``RUNNING`` / ``TASK_STATE_RUNNING`` -> the enum number.

    Raises:
        ValueError: not a value of the enum.
    """
    key = name.upper().replace("-", "_")
    if not key.startswith(prefix):
        key = prefix + key
    try:
        return int(enum.Value(key))
    except ValueError:
        names = enum.keys()  # a protobuf enum wrapper, not a dict
        choices = ", ".join(
            n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED")
        )
        raise ValueError(f"{name!r} is not one of: {choices}") from None


async def paged(
    fetch: Callable[[str], Awaitable[tuple[Sequence[Item], str]]], limit: int | None = None
) -> AsyncIterator[Item]:
    """Items of every page (``fetch(token) -> (items, next_token)``), up to ``limit``."""
    token = ""
    count = 0
    while True:
        items, token = await fetch(token)
        for item in items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        if not token:
            return
