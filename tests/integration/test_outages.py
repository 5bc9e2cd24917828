"""A dependency that goes away flips health; when it returns, health recovers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2 as std
from grpc_health.v1 import health_pb2_grpc as std_grpc
from sqlalchemy.engine import make_url

from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.netfault import FaultyProxy
from tests.support import make_settings, running_server

SERVING = std.HealthCheckResponse.SERVING
NOT_SERVING = std.HealthCheckResponse.NOT_SERVING


async def _next_status(stream: object, want: int, timeout: float = 15) -> None:
    async def loop() -> None:
        while True:
            reply = await stream.read()  # type: ignore[attr-defined]
            if reply.status == want:
                return

    await asyncio.wait_for(loop(), timeout)


async def _component(channel: object, name: str) -> health_pb2.ComponentHealth:
    stub = health_pb2_grpc.HealthServiceStub(channel)
    report = (await stub.GetHealthReport(health_pb2.GetHealthReportRequest())).report
    return {c.name: c for c in report.components}[name]


@pytest.mark.pg
async def test_postgres_unreachable_flips_to_not_serving_and_back(
    tmp_path: Path, pg_database: str
) -> None:
    url = make_url(pg_database)
    proxy = FaultyProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        async with running_server(make_settings(tmp_path, via_proxy)) as srv:
            async with srv.channel() as channel:
                watch = std_grpc.HealthStub(channel).Watch(std.HealthCheckRequest(service=""))
                await _next_status(watch, SERVING)
                events_watch = std_grpc.HealthStub(channel).Watch(
                    std.HealthCheckRequest(service="datamcp.v1.EventService")
                )
                await _next_status(events_watch, SERVING)
                proxy.cut()
                await _next_status(watch, NOT_SERVING)
                await _next_status(events_watch, NOT_SERVING)
                db = await _component(channel, "database")
                assert db.status == health_pb2.COMPONENT_STATUS_UNHEALTHY
                assert "database" in db.details
                proxy.restore()
                await _next_status(watch, SERVING)
                db = await _component(channel, "database")
                assert db.status == health_pb2.COMPONENT_STATUS_HEALTHY
    finally:
        await proxy.close()


async def _listener(port: int = 0) -> asyncio.Server:
    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    return await asyncio.start_server(accept, "127.0.0.1", port)


@pytest.mark.parametrize(
    ("critical", "overall_when_down", "serving_when_down"),
    [
        (False, health_pb2.COMPONENT_STATUS_DEGRADED, SERVING),
        (True, health_pb2.COMPONENT_STATUS_UNHEALTHY, NOT_SERVING),
    ],
    ids=["optional-degrades", "critical-stops-serving"],
)
async def test_external_dependency_down_degrades_or_stops_serving(
    tmp_path: Path,
    database_url: str,
    critical: bool,
    overall_when_down: int,
    serving_when_down: int,
) -> None:
    backend = await _listener()
    port = backend.sockets[0].getsockname()[1]
    deps = [{"name": "billing", "target": f"tcp://127.0.0.1:{port}", "critical": critical}]
    settings = make_settings(tmp_path, database_url, **{"health.dependencies": deps})
    try:
        async with running_server(settings) as srv, srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            check = std_grpc.HealthStub(channel).Check
            request = health_pb2.GetHealthReportRequest(refresh=True)
            report = (await stub.GetHealthReport(request)).report
            assert report.status == health_pb2.COMPONENT_STATUS_HEALTHY
            backend.close()
            await backend.wait_closed()
            report = (await stub.GetHealthReport(request)).report
            assert report.status == overall_when_down
            dep = {c.name: c for c in report.components}["dependency:billing"]
            assert "unreachable" in dep.details
            assert dep.critical is critical
            assert (await check(std.HealthCheckRequest())).status == serving_when_down
            backend = await _listener(port)
            report = (await stub.GetHealthReport(request)).report
            assert report.status == health_pb2.COMPONENT_STATUS_HEALTHY
            assert (await check(std.HealthCheckRequest())).status == SERVING
    finally:
        backend.close()
