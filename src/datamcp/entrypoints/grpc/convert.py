"""Domain <-> protobuf translation for the health and metrics messages."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from datamcp.core.health import ComponentHealth, HealthReport, Status
from datamcp.core.metrics import MetricsSnapshot
from datamcp.v1 import health_pb2

_STATUS = {
    Status.HEALTHY: health_pb2.COMPONENT_STATUS_HEALTHY,
    Status.DEGRADED: health_pb2.COMPONENT_STATUS_DEGRADED,
    Status.UNHEALTHY: health_pb2.COMPONENT_STATUS_UNHEALTHY,
}


def timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch_seconds * 1e9))
    return ts


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def component_to_proto(c: ComponentHealth) -> health_pb2.ComponentHealth:
    return health_pb2.ComponentHealth(
        name=c.name,
        status=_STATUS[c.status],
        details=c.details,
        check_latency=duration(c.latency_ms / 1000.0),
        checked_at=timestamp(c.checked_at),
        critical=c.critical,
        attributes=dict(c.attributes),
    )


def report_to_proto(report: HealthReport) -> health_pb2.HealthReport:
    return health_pb2.HealthReport(
        status=_STATUS[report.status],
        components=[component_to_proto(c) for c in report.components],
        serving=dict(report.services),
        generate_time=timestamp(report.generated_at),
        uptime=duration(report.uptime_seconds),
        version=report.version,
    )


def metrics_to_proto(snapshot: MetricsSnapshot) -> health_pb2.MetricsSnapshot:
    def section(name: str) -> health_pb2.MetricsSection:
        return health_pb2.MetricsSection(values=dict(snapshot.sections.get(name, {})))

    return health_pb2.MetricsSnapshot(
        take_time=timestamp(snapshot.taken_at),
        uptime=duration(snapshot.uptime_seconds),
        methods=[
            health_pb2.MethodMetrics(
                method=m.method,
                request_count=m.requests,
                error_count=m.errors,
                status_counts=dict(m.codes),
                latency_p50_ms=m.p50_ms,
                latency_p90_ms=m.p90_ms,
                latency_p99_ms=m.p99_ms,
                latency_max_ms=m.max_ms,
            )
            for m in snapshot.methods
        ],
        agents=section("agents"),
        pipelines=section("pipelines"),
        memory=section("memory"),
        infrastructure=section("infrastructure"),
    )
