"""Server tracing through opentelemetry-instrumentation-grpc, made affordable.

Two things keep the library's aio server interceptor off the hot path:

- As a grpc interceptor it re-runs its filter and rebuilds a wrapped handler
  on every call, although what it builds depends only on the method (its span
  reads the method name from the call details and everything else from the
  per-call context). Here the library's span wrappers are applied once per
  method, when the service is registered (``wrapping.py``).
- Its per-call wrapper costs about as much as the span it records, even when
  the span is not sampled. So the head-sampling decision is made here, before
  the wrapper: a call carrying a W3C ``traceparent`` follows its caller's
  sampled flag; a new trace is sampled with probability ``sample_ratio``.
  Unsampled calls skip tracing entirely (their logs keep the request id).

Spans, attributes and status handling of sampled calls are the library's own;
``_CheaperAioServerInterceptor`` only computes the same span attributes with
less work per call (the method's attributes once per method, the peer's once
per peer address) and skips the library's remote-context extraction when the
call carries no propagation header (extracting from nothing yields an empty
context, which is what a server task starts with anyway).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any
from urllib.parse import unquote

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc._aio_server import (
    OpenTelemetryAioServerInterceptor,
    _OpenTelemetryAioServicerContext,
)
from opentelemetry.instrumentation.grpc.version import __version__ as otel_grpc_version
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.semconv._incubating.attributes.net_attributes import (
    NET_PEER_IP,
    NET_PEER_NAME,
    NET_PEER_PORT,
)
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)

from datamcp.entrypoints.grpc.wrapping import rebuild

log = logging.getLogger(__name__)

_NO_REMOTE_CONTEXT = nullcontext()
_PEER_CACHE_SIZE = 1024
_OK = grpc.StatusCode.OK.value[0]


class _CheaperAioServerInterceptor(OpenTelemetryAioServerInterceptor):
    """The library's aio server interceptor with its two per-call helpers
    made cheaper; the spans and their attributes are unchanged."""

    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__(tracer)  # type: ignore[no-untyped-call]
        self._method_attributes: dict[str, dict[str, Any]] = {}
        self._peer_attributes: dict[str, dict[str, Any]] = {}
        self._propagated = frozenset(propagate.get_global_textmap().fields)

    def _set_remote_context(self, servicer_context: Any) -> Any:
        for key, _ in servicer_context.invocation_metadata() or ():
            if key in self._propagated:
                return super()._set_remote_context(servicer_context)
        return _NO_REMOTE_CONTEXT

    def _start_span(
        self, handler_call_details: Any, context: Any, set_status_on_exception: bool = False
    ) -> Any:
        return self._tracer.start_as_current_span(
            name=handler_call_details.method,
            kind=trace.SpanKind.SERVER,
            attributes=self._attributes(handler_call_details.method, context),
            set_status_on_exception=set_status_on_exception,
        )

    def _intercept_aio_server_unary(
        self, behavior: Callable[..., Awaitable[Any]], handler_call_details: Any
    ) -> Callable[..., Awaitable[Any]]:
        """The library's unary wrapper with ``start_as_current_span`` (two
        generator context managers per call) spelled out; same span, same
        exception recording (the library records an exception twice: in its
        wrapper and in ``use_span``), same context handling."""
        name = handler_call_details.method
        tracer = self._tracer

        async def _unary_interceptor(request_or_iterator: Any, context: Any) -> Any:
            with self._set_remote_context(context):
                span = tracer.start_span(
                    name=name,
                    kind=trace.SpanKind.SERVER,
                    attributes=self._attributes(name, context),
                    record_exception=True,
                    set_status_on_exception=False,
                )
                try:
                    token = otel_context.attach(trace.set_span_in_context(span))
                    try:
                        wrapped = _OpenTelemetryAioServicerContext(context, span)  # type: ignore[no-untyped-call]
                        try:
                            return await behavior(request_or_iterator, wrapped)
                        except Exception as error:
                            if type(error) is not Exception:
                                span.record_exception(error)
                            raise
                    finally:
                        otel_context.detach(token)
                except Exception as exc:
                    if span.is_recording():
                        span.record_exception(exc)
                    raise
                finally:
                    span.end()

        return _unary_interceptor

    def _attributes(self, name: str, context: Any) -> dict[str, Any]:
        """The library's span attributes; the method's are computed once."""
        base = self._method_attributes.get(name)
        if base is None:
            base = {RPC_SYSTEM: "grpc", RPC_GRPC_STATUS_CODE: _OK}
            if name:
                service, method = name.lstrip("/").split("/", 1)
                base[RPC_METHOD] = method
                base[RPC_SERVICE] = service
            self._method_attributes[name] = base
        attributes = dict(base)
        for key, value in context.invocation_metadata() or ():
            if key == "user-agent":
                attributes["rpc.user_agent"] = value
        attributes.update(self._peer(context.peer()))
        return attributes

    def _peer(self, peer: str) -> dict[str, Any]:
        """The library's peer attributes, parsed once per peer address."""
        cached = self._peer_attributes.get(peer)
        if cached is not None:
            return cached
        attributes: dict[str, Any] = {}
        if not peer.startswith("unix:"):
            try:
                ip, port = peer.split(",", maxsplit=1)[0].split(":", 1)[1].rsplit(":", 1)
            except (IndexError, ValueError):
                log.warning("Failed to parse peer address '%s'", peer)
                return attributes
            ip = unquote(ip)
            attributes = {NET_PEER_IP: ip, NET_PEER_PORT: port}
            if ip in ("[::1]", "127.0.0.1"):
                attributes[NET_PEER_NAME] = "localhost"
        if len(self._peer_attributes) >= _PEER_CACHE_SIZE:
            self._peer_attributes.clear()
        self._peer_attributes[peer] = attributes
        return attributes


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


class _Details:
    """The call details the library's wrappers read: only the method name."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[Any, ...] = ()


class MethodTracing:
    """OpenTelemetry server spans for every method except ``untraced`` prefixes.

    Health and reflection are excluded: the health ``Watch`` writes through
    ``context.write``, which the library's context wrapper breaks. ``wrap``
    runs once per method at registration (see ``wrapping.py``); a call then
    only makes the sampling decision, and unsampled calls go straight to the
    wrapped behavior.
    """

    def __init__(
        self, provider: TracerProvider, untraced: tuple[str, ...], sample_ratio: float = 1.0
    ) -> None:
        # The tracer ``aio_server_interceptor`` would make.
        tracer = trace.get_tracer(
            "opentelemetry.instrumentation.grpc",
            otel_grpc_version,
            provider,
            schema_url="https://opentelemetry.io/schemas/1.11.0",
        )
        self._library = _CheaperAioServerInterceptor(tracer)
        self._untraced = untraced
        self._ratio = sample_ratio
        self._random = random.random

    def _sampled(self, context: aio.ServicerContext) -> bool:
        decided = caller_sampled(context.invocation_metadata())
        if decided is not None:
            return decided
        return self._random() < self._ratio

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` with the library's span around it (per the sampling)."""
        if method.startswith(self._untraced):
            return handler
        details = _Details(method)
        if handler.response_streaming:
            return rebuild(handler, partial(self._stream, details))
        return rebuild(handler, partial(self._unary, details))

    def _unary(
        self, details: _Details, behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        traced = self._library._intercept_aio_server_unary(behavior, details)
        if self._ratio >= 1.0:
            return traced
        sampled = self._sampled

        async def sampling(request: Any, context: aio.ServicerContext) -> Any:
            if sampled(context):
                return await traced(request, context)
            return await behavior(request, context)

        return sampling

    def _stream(
        self, details: _Details, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        traced = self._library._intercept_aio_server_stream(behavior, details)  # type: ignore[no-untyped-call]
        if self._ratio >= 1.0:
            return traced  # type: ignore[no-any-return]
        sampled = self._sampled

        async def sampling(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            chosen = traced if sampled(context) else behavior
            async for response in chosen(request, context):
                yield response

        return sampling
