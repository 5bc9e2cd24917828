"""``client.health``: the server's health report and metrics (HealthService).

Example:
    report = await client.health.report()
    print(report.status, report.serving[""])
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from datamcp.v1 import health_pb2, health_pb2_grpc
from datamcp_client._rpc import Connection, to_datetime, to_seconds


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    status: str
    critical: bool
    details: str
    latency: float


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``status`` is HEALTHY / DEGRADED / UNHEALTHY; ``serving`` maps each
    service ("" = the whole server) to whether it serves."""

    status: str
    components: tuple[Component, ...]
    serving: dict[str, bool]
    version: str
    uptime: float
    generate_time: datetime | None

    @property
    def ok(self) -> bool:
        return self.serving.get("", False)

    @classmethod
    def from_proto(cls, r: health_pb2.HealthReport) -> HealthReport:
        return cls(
            status=_status(r.status),
            components=tuple(
                Component(
                    c.name, _status(c.status), c.critical, c.details, to_seconds(c.check_latency)
                )
                for c in r.components
            ),
            serving=dict(r.serving),
            version=r.version,
            uptime=to_seconds(r.uptime),
            generate_time=to_datetime(r.generate_time),
        )


def _status(value: health_pb2.ComponentStatus.ValueType) -> str:
    return health_pb2.ComponentStatus.Name(value).removeprefix("COMPONENT_STATUS_")


class HealthClient:
    """Reached as ``client.health``."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._stub = health_pb2_grpc.HealthServiceStub(connection.channel)

    async def report(self, *, refresh: bool = False) -> HealthReport:
        """The latest report (``refresh`` runs every check now)."""
        r = await self._conn.unary(
            self._stub.GetHealthReport,
            health_pb2.GetHealthReportRequest(refresh=refresh),
            idempotent=True,
        )
        return HealthReport.from_proto(r.report)

    async def watch(self) -> AsyncIterator[HealthReport]:
        """The report now and on every change, until the stream is closed."""
        call = self._stub.WatchHealth(health_pb2.WatchHealthRequest(), metadata=self._conn.metadata)
        async for item in self._conn.stream(call):
            yield HealthReport.from_proto(item.report)

    async def metrics(self) -> dict[str, Any]:
        """Per-method counts and latencies plus the service sections, as JSON."""
        r = await self._conn.unary(
            self._stub.GetMetrics, health_pb2.GetMetricsRequest(), idempotent=True
        )
        return json_format.MessageToDict(r.snapshot, preserving_proto_field_name=True)
