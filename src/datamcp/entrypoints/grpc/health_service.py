"""datamcp.v1.HealthService: the operator's view of health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc import aio

from datamcp.core.health import HealthMonitor, HealthReport
from datamcp.core.metrics import MetricsRegistry
from datamcp.entrypoints.grpc.convert import metrics_to_proto, report_to_proto
from datamcp.v1 import health_pb2, health_pb2_grpc


class HealthService(health_pb2_grpc.HealthServiceServicer):
    def __init__(
        self, monitor: HealthMonitor, metrics: MetricsRegistry, stopping: asyncio.Event
    ) -> None:
        self._monitor = monitor
        self._metrics = metrics
        self._stopping = stopping
        self._last: tuple[HealthReport | None, health_pb2.HealthReport] = (
            None,
            health_pb2.HealthReport(),
        )
        self._response: tuple[HealthReport | None, health_pb2.GetHealthReportResponse] = (
            None,
            health_pb2.GetHealthReportResponse(),
        )

    async def _current(self, refresh: bool = False) -> HealthReport:
        report = self._monitor.report
        if refresh or report is None:
            report = await self._monitor.evaluate()
        return report

    def _proto(self, report: HealthReport) -> health_pb2.HealthReport:
        """The report as protobuf, converted once per report, not once per call."""
        cached, proto = self._last
        if cached is not report:
            proto = report_to_proto(report)
            self._last = (report, proto)
        return proto

    async def GetHealthReport(
        self, request: health_pb2.GetHealthReportRequest, context: aio.ServicerContext
    ) -> health_pb2.GetHealthReportResponse:
        report = await self._current(request.refresh)
        # The response too is built once per report: wrapping the report in a
        # new response copies it. Nothing mutates a response after it is
        # returned (grpc only serializes it), so sharing one is safe.
        cached, response = self._response
        if cached is not report:
            response = health_pb2.GetHealthReportResponse(report=self._proto(report))
            self._response = (report, response)
        return response

    async def GetMetrics(
        self, request: health_pb2.GetMetricsRequest, context: aio.ServicerContext
    ) -> health_pb2.GetMetricsResponse:
        return health_pb2.GetMetricsResponse(snapshot=metrics_to_proto(self._metrics.snapshot()))

    async def WatchHealth(
        self, request: health_pb2.WatchHealthRequest, context: aio.ServicerContext
    ) -> AsyncIterator[health_pb2.WatchHealthResponse]:
        report = await self._current()
        yield health_pb2.WatchHealthResponse(report=self._proto(report))
        while not self._stopping.is_set():
            report = await self._monitor.wait_for_change()
            yield health_pb2.WatchHealthResponse(report=self._proto(report))
