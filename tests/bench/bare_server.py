"""The baseline: a bare ``grpc.aio`` server with no interceptors.

It answers ``datamcp.v1.HealthService/GetHealthReport`` with a prebuilt
report shaped like the real server's default one (the same components,
attributes and serving map, within a few bytes of its size), so the
difference to the full stack is what the mesh adds per call: the entry
(auth, rate limiting, request ids, metrics, error mapping), tracing and
looking up the report, not a smaller message to encode and send.

Run as ``python -m tests.bench.bare_server``: it prints the bound port on
stdout, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio

from datamcp import __version__
from datamcp.v1 import health_pb2, health_pb2_grpc

_NOT_BENCHED = "the bare benchmark server only serves GetHealthReport"
_POOL = (
    "Pool size: 5  Connections in pool: 1 Current Overflow: -4 Current Checked out connections: 0"
)


def _timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch_seconds * 1e9))
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _component(
    name: str, details: str, now: float, critical: bool, attributes: dict[str, str]
) -> health_pb2.ComponentHealth:
    return health_pb2.ComponentHealth(
        name=name,
        status=health_pb2.COMPONENT_STATUS_HEALTHY,
        details=details,
        check_latency=_duration(0.0016),
        checked_at=_timestamp(now),
        critical=critical,
        attributes=attributes,
    )


def build_response() -> health_pb2.GetHealthReportResponse:
    """A response with the shape of the real server's default report."""
    now = time.time()
    components = [
        _component(
            "database",
            "sqlite reachable and writable",
            now,
            True,
            {"pool": _POOL, "dialect": "sqlite"},
        ),
        _component("event_bus", "0 queued, 0 published in 0 commits", now, True, {"queued": "0"}),
        _component("memory_stores", "1 memory store(s) answering", now, False, {}),
    ]
    services = [
        f"datamcp.v1.{name}"
        for name in (
            "PipelineService",
            "MemorySyncService",
            "HealthService",
            "EventService",
            "AgentService",
        )
    ]
    report = health_pb2.HealthReport(
        status=health_pb2.COMPONENT_STATUS_HEALTHY,
        components=components,
        serving={"": True, **dict.fromkeys(services, True)},
        generate_time=_timestamp(now),
        uptime=_duration(12.5),
        version=__version__,
    )
    return health_pb2.GetHealthReportResponse(report=report)


class BareHealthService(health_pb2_grpc.HealthServiceServicer):
    """Returns the same prebuilt response to every call.

    Only ``GetHealthReport`` is benchmarked; the other methods exist because
    the generated servicer declares them abstract.
    """

    def __init__(self, response: health_pb2.GetHealthReportResponse) -> None:
        self._response = response

    async def GetHealthReport(
        self, request: health_pb2.GetHealthReportRequest, context: aio.ServicerContext
    ) -> health_pb2.GetHealthReportResponse:
        return self._response

    async def GetMetrics(
        self, request: health_pb2.GetMetricsRequest, context: aio.ServicerContext
    ) -> health_pb2.GetMetricsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_BENCHED)
        raise AssertionError("unreachable: abort raises")

    async def WatchHealth(
        self, request: health_pb2.WatchHealthRequest, context: aio.ServicerContext
    ) -> AsyncIterator[health_pb2.WatchHealthResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_BENCHED)
        yield health_pb2.WatchHealthResponse()  # unreachable: abort raises


async def serve(host: str = "127.0.0.1") -> None:
    """Serve on ``host`` port 0, print the port, stop on SIGTERM/SIGINT."""
    server = aio.server()
    health_pb2_grpc.add_HealthServiceServicer_to_server(BareHealthService(build_response()), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve())
