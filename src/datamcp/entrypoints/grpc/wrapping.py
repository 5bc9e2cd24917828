"""How services reach the grpc server: wrapped once per method, found in one table.

Two per-call costs of ``grpc.aio`` that depend only on how handlers are added:

- Server interceptors run on every call: the server awaits a chain of
  ``intercept_service`` coroutines (one per interceptor, each with its own
  continuation) before it looks at the handler, although what our wrappers
  build depends only on the method. So the mesh has no grpc interceptors:
  each handler is wrapped once, when its service is added.
- For every incoming call the server's main loop runs ``asyncio.wait`` over
  one pending "request call" future per *registered* method (the generated
  code's ``add_registered_method_handlers``), plus one for everything else.
  That is O(methods) per call: with the mesh's ~55 methods it cost more than
  everything else the mesh adds to a call. So no method is registered: all
  of them live in one generic handler, one dict lookup per call, and the loop
  waits on a single future.

``WrappingRegistrar`` stands in for the server while a generated
``add_*Servicer_to_server`` function (or any code that adds handlers the same
way) runs. Before the server starts, ``check`` holds the method tables
against the services' descriptors: a method of the proto with no handler
(not in its table, or left to the generated base class, which answers
UNIMPLEMENTED) stops the start, named, instead of failing its first caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from datamcp.core.errors import ConfigError

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""(full method name, handler) -> the handler to serve instead."""

_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def rebuild(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[[Callable[..., Any]], Callable[..., Any]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behavior replaced by ``behavior(old behavior)``.

    The cardinality and the response serializer stay; the request
    deserializer too unless another one is given.
    """
    attribute, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior(getattr(handler, attribute)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose answers are wrapped, once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every added method by its full name."""

    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods = methods

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._methods.get(details.method)


class WrappingRegistrar:
    """What a service's ``add_*_to_server`` function sees instead of the server.

    Methods the generated code would register go, wrapped, into the one
    method table (consulted first); other generic handlers are kept behind
    it and their answers wrapped per method on first use. Add everything
    before the server starts.
    """

    def __init__(self, server: aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        #: Each service's table as it was added (unwrapped), for ``check``.
        self._tables: dict[str, Mapping[str, grpc.RpcMethodHandler]] = {}
        server.add_generic_rpc_handlers((_MethodTable(self._methods),))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._tables[service] = dict(handlers)
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._methods[method] = self._wrap(method, handler)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        wrapped = tuple(_WrappedGeneric(h, self._wrap) for h in handlers)
        self._server.add_generic_rpc_handlers(wrapped)

    def check(self, services: Iterable[ServiceDescriptor]) -> None:
        """Every method of ``services`` and of every service added with a
        table has a handler of its own; every handler is for a method of
        its service's descriptor.

        Raises:
            ConfigError: naming each method without a handler (or handler
                without a method).
        """
        wanted = {s.full_name: s for s in services}
        problems: list[str] = []
        pool = descriptor_pool.Default()
        for name in self._tables.keys() - wanted.keys():
            try:
                wanted[name] = pool.FindServiceByName(name)
            except KeyError:
                problems.append(
                    f"grpc service {name}: a method table, but no descriptor of it is loaded"
                )
        for name, descriptor in sorted(wanted.items()):
            table = self._tables.get(name)
            if table is None:
                problems.append(
                    f"grpc service {name}: hosted but never added (no handler for any method)"
                )
                continue
            for method in descriptor.methods:
                handler = table.get(method.name)
                if handler is None:
                    problems.append(
                        f"grpc method /{name}/{method.name}: no handler "
                        "(not in its service's table)"
                    )
                elif _is_generated_placeholder(handler):
                    problems.append(
                        f"grpc method /{name}/{method.name}: no handler (the servicer does "
                        "not implement it; its generated base class answers UNIMPLEMENTED)"
                    )
            known = {m.name for m in descriptor.methods}
            problems += [
                f"grpc method /{name}/{m}: a handler, but the service has no such method"
                for m in table
                if m not in known
            ]
        if problems:
            raise ConfigError(problems)


def _is_generated_placeholder(handler: grpc.RpcMethodHandler) -> bool:
    """Whether the handler's behavior is a generated servicer base class's
    method (``*_pb2_grpc``): what a servicer inherits for a method it lacks."""
    attribute, _ = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)
    return str(getattr(behavior, "__module__", "")).endswith("_pb2_grpc")
