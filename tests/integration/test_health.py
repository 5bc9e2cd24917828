"""Standard grpc.health.v1 and datamcp.v1.HealthService through the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2 as std_health_pb2
from grpc_health.v1 import health_pb2_grpc as std_health_grpc

from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.support import make_settings, rich_details, running_server

SERVING = std_health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = std_health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ["", "datamcp.v1.HealthService", "datamcp.v1.EventService"]


async def test_check_reports_serving_for_server_and_every_service(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv:
        async with srv.channel() as channel:
            stub = std_health_grpc.HealthStub(channel)
            for name in SERVICES:
                reply = await stub.Check(std_health_pb2.HealthCheckRequest(service=name))
                assert reply.status == SERVING, name
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Check(std_health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_serving_then_not_serving_on_shutdown(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv:
        async with srv.channel() as channel:
            stub = std_health_grpc.HealthStub(channel)
            streams = {
                name: stub.Watch(std_health_pb2.HealthCheckRequest(service=name))
                for name in SERVICES
            }
            for name, stream in streams.items():
                first = await asyncio.wait_for(stream.read(), 5)
                assert first.status == SERVING, name
            stopping = asyncio.create_task(srv.server.stop(2.0))
            for name, stream in streams.items():
                update = await asyncio.wait_for(stream.read(), 5)
                assert update.status == NOT_SERVING, name
            await stopping


async def test_health_report_lists_components_with_latency(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv:
        async with srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            reply = await stub.GetHealthReport(health_pb2.GetHealthReportRequest(refresh=True))
    report = reply.report
    assert report.status == health_pb2.COMPONENT_STATUS_HEALTHY
    db = {c.name: c for c in report.components}["database"]
    assert db.status == health_pb2.COMPONENT_STATUS_HEALTHY
    assert db.critical
    assert db.check_latency.ToNanoseconds() > 0
    assert db.attributes["dialect"] in {"sqlite", "postgresql"}
    assert all(report.serving[name] for name in SERVICES)
    bus = {c.name: c for c in report.components}["event_bus"]
    assert bus.status == health_pb2.COMPONENT_STATUS_HEALTHY and bus.critical
    assert report.version


async def test_watch_health_streams_current_report_then_changes(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)
        stream = stub.WatchHealth(health_pb2.WatchHealthRequest())
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.report.status == health_pb2.COMPONENT_STATUS_HEALTHY
        stopping = asyncio.create_task(srv.server.stop(2.0))
        last = await asyncio.wait_for(stream.read(), 5)
        assert last.report.status == health_pb2.COMPONENT_STATUS_UNHEALTHY
        assert not last.report.serving[""]
        # Then the server ends the stream: reconnect elsewhere.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(stream.read(), 5)
        await stopping
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rich_details(ended.value)["ErrorInfo"].reason == "SERVER_SHUTTING_DOWN"
