"""A test-only service hosted next to the real ones, to reach code paths no
production RPC exercises on demand: slow calls, crashes, typed core errors."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import wrappers_pb2
from grpc import aio

from datamcp.core.context import current_principal, current_request_id
from datamcp.core.errors import Conflict, FieldViolation, InvalidArgument, Unavailable
from datamcp.entrypoints.grpc.server import Registration

SERVICE = "datamcp.test.Probe"
S = wrappers_pb2.StringValue


async def _whoami(request: S, context: aio.ServicerContext) -> S:
    p = current_principal.get()
    return S(value=f"{p.subject}|{p.tenant}|{','.join(sorted(p.roles))}|{current_request_id.get()}")


async def _sleep(request: S, context: aio.ServicerContext) -> S:
    await asyncio.sleep(float(request.value))
    return S(value="slept")


async def _boom(request: S, context: aio.ServicerContext) -> S:
    raise RuntimeError("secret internal detail")


async def _invalid(request: S, context: aio.ServicerContext) -> S:
    raise InvalidArgument("name is bad", [FieldViolation("name", "must not be empty")])


async def _conflict(request: S, context: aio.ServicerContext) -> S:
    raise Conflict("version 3 expected, found 4", reason="VERSION_MISMATCH")


async def _leaky_sql(request: S, context: aio.ServicerContext) -> S:
    """What a careless wrapper of a driver error would say."""
    raise Unavailable(
        "event store unavailable: OperationalError: (sqlite3.OperationalError) disk I/O error\n"
        "[SQL: INSERT INTO events (tenant, id, data) VALUES (?, ?, ?)]\n"
        "[parameters: ('other-tenant', 'secret-id', '{\"secret\": 1}')]"
    )


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    def unary(fn: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=S.FromString, response_serializer=S.SerializeToString
        )

    return {
        "WhoAmI": unary(_whoami),
        "Sleep": unary(_sleep),
        "Boom": unary(_boom),
        "Invalid": unary(_invalid),
        "Conflict": unary(_conflict),
        "LeakySql": unary(_leaky_sql),
    }


def probe_registration() -> Registration:
    return Registration(
        SERVICE,
        lambda handler, server: server.add_generic_rpc_handlers((handler,)),
        grpc.method_handlers_generic_handler(SERVICE, _handlers()),
    )


def probe_call(channel: aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=S.SerializeToString,
        response_deserializer=S.FromString,
    )
