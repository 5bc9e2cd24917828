"""Server tracing through opentelemetry-instrumentation-grpc, made affordable.

Two things keep the library's aio server interceptor off the hot path:

- It re-runs its filter and rebuilds a wrapped handler on every call, although
  what it builds depends only on the method (its span reads the method name
  from the call details and everything else from the per-call context). This
  adapter asks the library once per method and reuses the handler.
- Its per-call wrapper costs about as much as the span it records, even when
  the span is not sampled. So the head-sampling decision is made here, before
  the wrapper: a call carrying a W3C ``traceparent`` follows its caller's
  sampled flag; a new trace is sampled with probability ``sample_ratio``.
  Unsampled calls skip tracing entirely (their logs keep the request id).

Spans, attributes and status handling of sampled calls are the library's own.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc import aio
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def caller_sampled(metadata: Sequence[tuple[str, str | bytes]] | None) -> bool | None:
    """The sampled flag of a W3C ``traceparent`` header, or None without one."""
    for key, value in metadata or ():
        if key == "traceparent":
            text = value.decode() if isinstance(value, bytes) else value
            flags = text.rsplit("-", 1)[-1]
            try:
                return bool(int(flags, 16) & 1)
            except ValueError:
                return None
    return None


class PerMethodTracingInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """OpenTelemetry server spans for every method except ``untraced`` prefixes.

    Health and reflection are excluded: the health ``Watch`` writes through
    ``context.write``, which the library's context wrapper breaks.
    """

    def __init__(
        self, provider: TracerProvider, untraced: tuple[str, ...], sample_ratio: float = 1.0
    ) -> None:
        self._inner = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
        self._untraced = untraced
        self._ratio = sample_ratio
        self._random = random.random
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _sampled(self, details: grpc.HandlerCallDetails) -> bool:
        if self._ratio >= 1.0:
            return True
        decided = caller_sampled(details.invocation_metadata)
        if decided is not None:
            return decided
        return self._random() < self._ratio

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(self._untraced) or not self._sampled(details):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]

        async def known(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

        traced = await self._inner.intercept_service(known, details)
        self._wrapped[method] = (handler, traced)
        return traced
