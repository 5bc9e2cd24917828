"""The server refuses to start while a method of a hosted service has no
handler: one missing from its service's table, or one the servicer leaves
to its generated base class (which would answer UNIMPLEMENTED)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc import aio

from datamcp.bootstrap import App
from datamcp.core.errors import ConfigError
from datamcp.entrypoints.grpc.server import MeshServer, Registration, hosted_services
from datamcp.entrypoints.grpc.wrapping import WrappingRegistrar
from tests.support import make_settings

#: A real service of the default descriptor pool that the mesh does not host.
SERVICE = "google.longrunning.Operations"
METHODS = [m.name for m in operations_pb2.DESCRIPTOR.services_by_name["Operations"].methods]


class _Operations(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """Implements every method but WaitOperation."""

    async def ListOperations(self, request: Any, context: Any) -> Any:
        return operations_pb2.ListOperationsResponse()

    async def GetOperation(self, request: Any, context: Any) -> Any:
        return operations_pb2.Operation()

    async def DeleteOperation(self, request: Any, context: Any) -> Any:
        return None

    async def CancelOperation(self, request: Any, context: Any) -> Any:
        return None


def _table(servicer: Any, names: list[str]) -> dict[str, grpc.RpcMethodHandler]:
    """What a generated ``add_*_to_server`` passes the registrar."""
    return {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in names}


def _registration(table: Mapping[str, grpc.RpcMethodHandler]) -> Registration:
    def add(handlers: Any, registrar: WrappingRegistrar) -> None:
        registrar.add_registered_method_handlers(SERVICE, handlers)

    return Registration(SERVICE, add, table)


async def _start_refused(tmp_path: Path, extra: Registration) -> ConfigError:
    app = await App.create(make_settings(tmp_path))
    server = MeshServer(app, [extra])
    try:
        with pytest.raises(ConfigError) as refused:
            await server.start()
    finally:
        await app.close()
        server.tracer_provider.shutdown()
    return refused.value


async def test_start_fails_naming_a_method_missing_from_its_table(tmp_path: Path) -> None:
    table = _table(_Operations(), [m for m in METHODS if m != "WaitOperation"])
    error = await _start_refused(tmp_path, _registration(table))
    assert error.problems == (
        f"grpc method /{SERVICE}/WaitOperation: no handler (not in its service's table)",
    )
    assert f"/{SERVICE}/WaitOperation" in error.message


async def test_start_fails_naming_a_method_the_servicer_does_not_implement(
    tmp_path: Path,
) -> None:
    error = await _start_refused(tmp_path, _registration(_table(_Operations(), METHODS)))
    (problem,) = error.problems
    assert problem.startswith(f"grpc method /{SERVICE}/WaitOperation: no handler")
    assert "UNIMPLEMENTED" in problem


async def test_every_hosted_service_must_be_added_and_handlers_need_a_method() -> None:
    registrar = WrappingRegistrar(aio.server(), lambda method, handler: handler)
    health = next(s for s in hosted_services() if s.full_name == "datamcp.v1.HealthService")
    registrar.add_registered_method_handlers(
        SERVICE,
        {**_table(_Operations(), METHODS[:4]), "Extra": _table(_Operations(), METHODS)[METHODS[0]]},
    )
    with pytest.raises(ConfigError) as refused:
        registrar.check([health])
    assert refused.value.problems == (
        "grpc service datamcp.v1.HealthService: hosted but never added (no handler for any method)",
        f"grpc method /{SERVICE}/WaitOperation: no handler (not in its service's table)",
        f"grpc method /{SERVICE}/Extra: a handler, but the service has no such method",
    )
