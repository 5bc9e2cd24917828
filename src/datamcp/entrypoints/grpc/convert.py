"""Domain <-> protobuf translation of times and durations (checked on the
way in, always representable on the way out), and of the health and
metrics messages."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.health import ComponentHealth, HealthReport, Status
from datamcp.core.metrics import MetricsSnapshot
from datamcp.v1 import health_pb2

_STATUS = {
    Status.HEALTHY: health_pb2.COMPONENT_STATUS_HEALTHY,
    Status.DEGRADED: health_pb2.COMPONENT_STATUS_DEGRADED,
    Status.UNHEALTHY: health_pb2.COMPONENT_STATUS_UNHEALTHY,
}


#: The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31 (UTC).
MIN_EPOCH = -62_135_596_800
MAX_EPOCH = 253_402_300_799
#: The longest Duration any request may carry: 100 years. Past it, times
#: derived from it (an expiry, a deadline) would leave the Timestamp range.
MAX_DURATION = 100 * 365.25 * 86_400
_MAX_PROTO_DURATION = 315_576_000_000

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def epoch_of(ts: timestamp_pb2.Timestamp, field: str) -> float:
    """A request's Timestamp as epoch seconds.

    Raises:
        InvalidArgument: it is outside the Timestamp range (years 1 to 9999)
            or its nanos are not 0..999,999,999.
    """
    if not (MIN_EPOCH <= ts.seconds <= MAX_EPOCH and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgument(
            f"{field} is not a valid timestamp",
            [FieldViolation(field, "a time between 0001-01-01 and 9999-12-31 (UTC)")],
            reason="INVALID_TIMESTAMP",
        )
    return ts.seconds + ts.nanos / 1e9


def seconds_of(
    d: duration_pb2.Duration, field: str, *, minimum: float = 0.0, maximum: float = MAX_DURATION
) -> float:
    """A request's Duration in seconds, within ``minimum``..``maximum``.

    Raises:
        InvalidArgument: malformed (nanos out of range or of another sign
            than seconds) or out of the range.
    """
    seconds, nanos = d.seconds, d.nanos
    value = seconds + nanos / 1e9
    if not -999_999_999 <= nanos <= 999_999_999 or seconds * nanos < 0:
        why = "malformed: nanos must be within +-999,999,999 and have the sign of seconds"
    elif not minimum <= value <= maximum:
        why = f"a duration of {_span(minimum)} to {_span(maximum)}"
    else:
        return value
    raise InvalidArgument(
        f"{field} is not a valid duration", [FieldViolation(field, why)], reason="INVALID_DURATION"
    )


def duration_seconds(d: duration_pb2.Duration, field: str) -> float:
    """A request's Duration in seconds when the core checks its range (a
    task timeout, a TTL): only its form is checked here.

    Raises:
        InvalidArgument: nanos out of range or of another sign than seconds.
    """
    return seconds_of(d, field, minimum=-math.inf, maximum=math.inf)


def _span(seconds: float) -> str:
    if seconds >= 86_400 * 365:
        return f"{seconds / (86_400 * 365.25):g} years"
    return f"{seconds:g}s"


def timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    """Epoch seconds as a Timestamp, clamped to the Timestamp range: a stored
    or derived time is always readable."""
    ts = timestamp_pb2.Timestamp()
    if not MIN_EPOCH <= epoch_seconds <= MAX_EPOCH:  # also NaN
        ts.seconds = MIN_EPOCH if epoch_seconds < 0 else MAX_EPOCH
        return ts
    ts.FromNanoseconds(int(epoch_seconds * 1e9))
    return ts


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as a Duration, clamped to the Duration range."""
    d = duration_pb2.Duration()
    if not -_MAX_PROTO_DURATION <= seconds <= _MAX_PROTO_DURATION:  # also NaN
        d.seconds = 0 if math.isnan(seconds) else int(math.copysign(_MAX_PROTO_DURATION, seconds))
        return d
    d.FromNanoseconds(int(seconds * 1e9))
    return d


#: What clients receive by default (gRPC's default receive limit).
_CLIENT_LIMIT = 4 * 1024 * 1024


def page_bytes(max_message_bytes: int) -> int:
    """How many bytes the items of one List answer may take: three quarters
    of the smaller of the server's message limit and what clients take by
    default, leaving room for the rest of the answer."""
    return min(max_message_bytes, _CLIENT_LIMIT) * 3 // 4


class Packer(Generic[T, M]):
    """Converts a page's items while they fit ``budget`` bytes: a ``fits``
    for ``core.paging.fill``, so that a List answer stays under the message
    limit (twenty 262 kB records do not fit in 4 MB). The first item is
    always taken."""

    def __init__(self, convert: Callable[[T], M], budget: int) -> None:
        self._convert = convert
        self._budget = budget
        self._used = 0
        self.messages: list[M] = []

    def __call__(self, item: T) -> bool:
        message = self._convert(item)
        size = message.ByteSize() + 8  # the field's tag and length
        if self.messages and self._used + size > self._budget:
            return False
        self.messages.append(message)
        self._used += size
        return True


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


E = TypeVar("E", bound=enum.Enum)


def enum_filter(
    values: Iterable[int], kind: type[E], *, what: str, prefix: str, field: str = "states"
) -> list[E]:
    """A repeated enum filter (``states`` of ListTasks, ListRuns...) as core
    values.

    Raises:
        InvalidArgument: a value the enum does not have (sent by a client
            built from a newer proto, or by hand).
    """
    values = list(values)
    known = [kind(v) for v in values if v in kind._value2member_map_]
    if len(known) != len(values):
        raise InvalidArgument(
            f"unknown {what}",
            [FieldViolation(field, f"{prefix}* values only")],
        )
    return known
