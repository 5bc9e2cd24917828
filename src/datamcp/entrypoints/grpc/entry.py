"""The entry: authentication, authorization, rate limiting, request ids,
metrics and error mapping for every call, in one wrapper per method.

The wrapper is built once per method when the service is registered (see
``wrapping.py``), so a call pays one extra coroutine frame for all of it.
The standard health and reflection services stay open: no credentials, and
only their streams are wrapped (to end them at shutdown).

Long-lived calls (any method that streams requests or responses) are
tracked (``live.py``): at shutdown :meth:`Entry.end_streams` ends them at
once with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from grpc import aio

from datamcp.core.auth import Authenticator
from datamcp.core.context import current_principal, current_request_id
from datamcp.core.errors import DataMCPError, FieldViolation, InvalidArgument
from datamcp.core.metrics import MetricsRegistry
from datamcp.core.ratelimit import KeyedRateLimiter
from datamcp.entrypoints.grpc.errors import internal_status, status_code, to_status
from datamcp.entrypoints.grpc.live import LiveCall, LiveCalls, shutting_down
from datamcp.entrypoints.grpc.nul import refuse_nul
from datamcp.entrypoints.grpc.wrapping import rebuild

log = logging.getLogger(__name__)

_random_bits = random.getrandbits

#: Services that answer without credentials and are not wrapped.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class _Malformed:
    """Stands in for a request whose bytes could not be parsed."""


_MALFORMED = _Malformed()


def _safe_deserializer(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:
            return _MALFORMED

    return deserialize


def _malformed() -> InvalidArgument:
    return InvalidArgument(
        "request body is not a valid protobuf message of the expected type",
        [FieldViolation("request", "could not be parsed")],
        reason="MALFORMED_REQUEST",
    )


class Entry:
    """Wraps each method's handler with the entry's per-call work."""

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: KeyedRateLimiter | None,
        metrics: MetricsRegistry,
    ) -> None:
        self._auth = authenticator
        self._limiter = limiter
        self._metrics = metrics
        self._auth_enabled = authenticator.enabled
        self.live = LiveCalls()

    def end_streams(self) -> None:
        """End every long-lived call now, each with UNAVAILABLE (the server
        is shutting down; clients reconnect elsewhere). Calls that start
        later end the same way as soon as they start."""
        self.live.end_all()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the entry (open services: see :meth:`_open`)."""
        request_streaming = bool(handler.request_streaming)
        if method.startswith(OPEN_PREFIXES):
            return self._open(handler)
        behavior: Callable[[Callable[..., Any]], Callable[..., Any]]
        if handler.response_streaming:
            behavior = partial(self._stream, method, streaming_request=request_streaming)
        else:
            behavior = partial(self._unary, method, streaming_request=request_streaming)
        return rebuild(handler, behavior, _safe_deserializer(handler.request_deserializer))

    def _open(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """An open service's method: undecodable requests are INVALID_ARGUMENT
        (not UNKNOWN naming a parser exception) and streams end with
        UNAVAILABLE at shutdown; nothing else is added."""
        deserializer = _safe_deserializer(handler.request_deserializer)
        if handler.request_streaming or handler.response_streaming:
            return rebuild(
                handler, partial(self._closable, streaming=handler.request_streaming), deserializer
            )
        return rebuild(handler, _parsed, deserializer)

    def _closable(self, inner: Callable[..., Any], *, streaming: bool) -> Callable[..., Any]:
        """An open service's stream (a generator), tracked like ours."""
        if not inspect.isasyncgenfunction(inner):
            return _parsed(inner)
        live = self.live

        async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            if request is _MALFORMED:
                await _abort(context, to_status(_malformed()))
            if streaming:
                request = _parsed_requests(request, context)
            call = live.open()
            try:
                async for response in inner(request, context):
                    call.sending = True
                    yield response
                    call.sent()
            except (asyncio.CancelledError, Exception) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    ended = call.ended_here()
                else:
                    ended = call.exiting = call.ended
                if ended:
                    await _abort(context, to_status(shutting_down(), current_request_id.get()))
                raise
            finally:
                live.close(call)

        return stream

    def _admit(self, method: str, roles: tuple[str, ...], context: aio.ServicerContext) -> None:
        """Set the call's request id and principal, or raise why it may not proceed."""
        authorization = request_id = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == "x-request-id":
                request_id = value
        # getrandbits, not os.urandom: a request id needs to be unique, not
        # secret, and a system call per request shows in the profile.
        current_request_id.set(request_id[:128] if request_id else f"{_random_bits(64):016x}")
        principal = self._auth.authenticate(authorization)
        current_principal.set(principal)
        if roles:
            self._auth.authorize(principal, method, roles)
        if self._limiter is not None:
            if self._auth_enabled:
                key = f"{principal.tenant}/{principal.subject}"
            else:
                key = context.peer().rsplit(":", 1)[0]
            self._limiter.check(key, method)

    async def _fail(self, context: aio.ServicerContext, exc: BaseException, method: str) -> None:
        """Abort the call for ``exc`` (always raises ``AbortError``)."""
        if isinstance(exc, DataMCPError) and status_code(exc) is not grpc.StatusCode.INTERNAL:
            await _abort(context, to_status(exc, current_request_id.get()))
            return
        error_id = os.urandom(6).hex()
        log.error(
            "unexpected error in %s",
            method,
            exc_info=exc,
            extra={"error_id": error_id, "method": method},
        )
        await _abort(context, internal_status(error_id))

    def _record(
        self, method: str, context: aio.ServicerContext, code: str | None, start: float
    ) -> None:
        if code is None or code == "OK":
            # The handler may have aborted or set a code itself.
            current = context.code()
            code = current.name if isinstance(current, grpc.StatusCode) else (code or "UNKNOWN")
        self._metrics.record_call(method, code, (time.perf_counter() - start) * 1000.0)

    def _unary(
        self, method: str, inner: Callable[..., Awaitable[Any]], *, streaming_request: bool
    ) -> Callable[..., Awaitable[Any]]:
        roles = self._auth.required_roles(method)

        async def behavior(request: Any, context: aio.ServicerContext) -> Any:
            # _Call's bookkeeping spelled out: no context-manager coroutines
            # on the path every unary call takes.
            start = time.perf_counter()
            code: str | None = "OK"
            call = self.live.open() if streaming_request else None
            try:
                self._admit(method, roles, context)
                return await inner(_validated(request, streaming_request), context)
            except aio.AbortError:
                code = None  # the handler aborted; the context knows the code
                raise
            except Exception as exc:
                code = _code_of(exc)
                await self._fail(context, exc, method)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                if call is not None and call.ended_here():
                    code = "UNAVAILABLE"
                    await self._fail(context, shutting_down(), method)
                raise
            finally:
                if call is not None:
                    self.live.close(call)
                self._record(method, context, code, start)

        return behavior

    def _stream(
        self, method: str, inner: Callable[..., AsyncIterator[Any]], *, streaming_request: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        roles = self._auth.required_roles(method)

        async def behavior(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            async with _Call(self, method, context) as call:
                self._admit(method, roles, context)
                async for response in inner(_validated(request, streaming_request), context):
                    call.sending = True
                    yield response
                    call.sent()

        return behavior


class _Call:
    """One streaming call's bookkeeping: tracks it (to end it at shutdown),
    maps what escapes the handler to a status, and records the outcome in
    the metrics. A class, not a generator-based context manager, because it
    runs on every call."""

    __slots__ = ("context", "entry", "live", "method", "start")

    def __init__(self, entry: Entry, method: str, context: aio.ServicerContext) -> None:
        self.entry = entry
        self.method = method
        self.context = context
        self.start = time.perf_counter()
        self.live: LiveCall | None = None

    async def __aenter__(self) -> LiveCall:
        self.live = self.entry.live.open()
        return self.live

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        code: str | None = "OK"
        assert self.live is not None
        try:
            if exc is None:
                return
            if isinstance(exc, aio.AbortError):
                code = None  # the handler aborted; the context knows the code
            elif isinstance(exc, Exception):
                if self.live.ended:  # whatever it was: what ended it was the shutdown
                    self.live.exiting = True
                    exc = shutting_down()
                code = _code_of(exc)
                await self.entry._fail(self.context, exc, self.method)
            elif isinstance(exc, asyncio.CancelledError) and self.live.ended_here():
                code = "UNAVAILABLE"
                await self.entry._fail(self.context, shutting_down(), self.method)
            else:
                code = "CANCELLED"
        finally:
            self.entry.live.close(self.live)
            self.entry._record(self.method, self.context, code, self.start)


def _code_of(exc: Exception) -> str:
    mapped = status_code(exc) if isinstance(exc, DataMCPError) else None
    return mapped.name if mapped else "INTERNAL"


def _validated(request: Any, streaming_request: bool) -> Any:
    if streaming_request:
        return _checked(request)
    if request is _MALFORMED:
        raise _malformed()
    return refuse_nul(request)


async def _abort(context: aio.ServicerContext, status: grpc.Status) -> None:
    """``abort_with_status`` spelled out, so a wrapping context (the tracing
    one) sees the code: it intercepts ``abort`` only."""
    await context.abort(status.code, status.details, status.trailing_metadata)


def _parsed(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """An open unary method: an undecodable request is INVALID_ARGUMENT."""

    async def call(request: Any, context: aio.ServicerContext) -> Any:
        if request is _MALFORMED:
            await _abort(context, to_status(_malformed()))
        return await inner(request, context)

    return call


async def _parsed_requests(
    requests: AsyncIterator[Any], context: aio.ServicerContext
) -> AsyncIterator[Any]:
    """An open stream's requests, aborting at an undecodable one."""
    async for item in requests:
        if item is _MALFORMED:
            await _abort(context, to_status(_malformed()))
        yield item


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _MALFORMED:
            raise _malformed()
        yield refuse_nul(request)
