"""datamcp.v1.HealthService: the operator's view of health and metrics; and
the standard grpc.health.v1 servicer the server feeds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2 as std

from datamcp.core.health import HealthMonitor, HealthReport
from datamcp.core.metrics import MetricsRegistry
from datamcp.entrypoints.grpc.convert import metrics_to_proto, report_to_proto
from datamcp.v1 import health_pb2, health_pb2_grpc


class HealthService(health_pb2_grpc.HealthServiceServicer):
    def __init__(self, monitor: HealthMonitor, metrics: MetricsRegistry) -> None:
        self._monitor = monitor
        self._metrics = metrics
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
        # Until the client leaves or the server ends the stream at shutdown
        # (after the final all-NOT_SERVING report).
        while True:
            report = await self._monitor.wait_for_change()
            yield health_pb2.WatchHealthResponse(report=self._proto(report))


class StandardHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1.Health as the server feeds it, with two changes to the
    library's servicer: ``List`` is implemented (the library left it
    unimplemented: it answered UNKNOWN naming an exception class), and
    ``Watch`` is a generator, not a loop over ``context.write``, so the
    server can end it at shutdown like any other stream (``live.py``)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": std.HealthCheckResponse.SERVING}
        self._changed = asyncio.Event()
        self._final = False
        # Per open Watch, the last change it has answered (see delivered()).
        self._generation = 0
        self._answered: dict[object, int] = {}
        self._progress = asyncio.Event()

    def _notify(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _answer(self, watcher: object, generation: int) -> None:
        self._answered[watcher] = generation
        self._progress.set()

    async def delivered(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until every open Watch has sent
        the latest statuses: at shutdown a prober sees NOT_SERVING before
        its stream is ended."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while any(g < self._generation for g in self._answered.values()):
                    self._progress.clear()
                    await self._progress.wait()

    async def set(self, service: str, status: int) -> None:
        if not self._final:
            self._statuses[service] = status
            self._notify()
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self._final = True
        self._statuses = dict.fromkeys(self._statuses, std.HealthCheckResponse.NOT_SERVING)
        self._notify()
        await super().enter_graceful_shutdown()

    async def Watch(
        self, request: std.HealthCheckRequest, context: aio.ServicerContext
    ) -> AsyncIterator[std.HealthCheckResponse]:
        last = None
        watcher = object()
        self._answered[watcher] = -1
        try:
            while True:
                changed, generation = self._changed, self._generation
                status = self._statuses.get(
                    request.service, std.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if status != last:
                    yield std.HealthCheckResponse(status=status)
                    last = status
                self._answer(watcher, generation)
                await changed.wait()
        finally:
            del self._answered[watcher]
            self._progress.set()

    async def List(
        self, request: std.HealthListRequest, context: aio.ServicerContext
    ) -> std.HealthListResponse:
        return std.HealthListResponse(
            statuses={
                name: std.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )
