"""Stream jobs: protobuf <-> core translation."""

from __future__ import annotations

from google.protobuf import duration_pb2

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.streams.model import (
    WINDOW_CLOSED,
    AggFunction,
    Aggregation,
    EventSource,
    Sink,
    StreamJob,
    StreamSpec,
    Window,
    WindowKind,
)
from datamcp.entrypoints.grpc.convert import duration, duration_seconds, timestamp
from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import streams_pb2

_KIND = {
    streams_pb2.STREAM_WINDOW_KIND_TUMBLING: WindowKind.TUMBLING,
    streams_pb2.STREAM_WINDOW_KIND_SLIDING: WindowKind.SLIDING,
    streams_pb2.STREAM_WINDOW_KIND_SESSION: WindowKind.SESSION,
}
_KIND_OUT = {v: k for k, v in _KIND.items()}
_FUNCTION = {
    streams_pb2.STREAM_AGGREGATION_FUNCTION_COUNT: AggFunction.COUNT,
    streams_pb2.STREAM_AGGREGATION_FUNCTION_SUM: AggFunction.SUM,
    streams_pb2.STREAM_AGGREGATION_FUNCTION_AVG: AggFunction.AVG,
    streams_pb2.STREAM_AGGREGATION_FUNCTION_MIN: AggFunction.MIN,
    streams_pb2.STREAM_AGGREGATION_FUNCTION_MAX: AggFunction.MAX,
}
_FUNCTION_OUT = {v: k for k, v in _FUNCTION.items()}


def _ms(d: duration_pb2.Duration, field: str) -> int:
    """A well-formed Duration in milliseconds (the range is the core's to say)."""
    return int(duration_seconds(d, field) * 1000)


def spec_from_proto(spec: streams_pb2.StreamJobSpec, prefix: str = "job.spec.") -> StreamSpec:
    """Translate; enum and oneof problems are field violations (the rest is
    checked by core validation)."""
    bad: list[FieldViolation] = []
    source: EventSource | None = None
    which = spec.WhichOneof("source")
    if which is None:
        bad.append(FieldViolation(prefix + "source", "set events (bus events) or push"))
    elif which == "events":
        e = spec.events
        source = EventSource(
            tuple(e.types),
            e.source,
            e.subject,
            {k: from_value(v, f"{prefix}events.where.{k}") for k, v in e.where.items()},
            e.from_earliest,
        )
    kind = _KIND.get(spec.window.kind)
    if kind is None:
        bad.append(FieldViolation(prefix + "window.kind", "TUMBLING, SLIDING or SESSION"))
    aggs: list[Aggregation] = []
    for i, a in enumerate(spec.aggregations):
        function = _FUNCTION.get(a.function)
        if function is None:
            bad.append(
                FieldViolation(f"{prefix}aggregations[{i}].function", "COUNT, SUM, AVG, MIN or MAX")
            )
            continue
        aggs.append(Aggregation(function, a.field, a.name))
    if bad:
        raise InvalidArgument("invalid stream job", bad, reason="INVALID_STREAM_JOB")
    assert kind is not None
    w = spec.window
    window = f"{prefix}window."
    return StreamSpec(
        window=Window(
            kind,
            _ms(w.size, f"{window}size"),
            _ms(w.slide, f"{window}slide"),
            _ms(w.gap, f"{window}gap"),
        ),
        aggregations=tuple(aggs),
        sink=Sink(
            spec.sink.emit_events,
            spec.sink.event_type or WINDOW_CLOSED,
            spec.sink.table,
            spec.sink.late_events,
        ),
        source=source,
        key_fields=tuple(spec.key_fields),
        event_time_field=spec.event_time_field,
        watermark_delay_ms=_ms(spec.watermark_delay, f"{prefix}watermark_delay"),
        allowed_lateness_ms=_ms(spec.allowed_lateness, f"{prefix}allowed_lateness"),
        idle_timeout_ms=_ms(spec.idle_timeout, f"{prefix}idle_timeout"),
    )


def spec_to_proto(spec: StreamSpec) -> streams_pb2.StreamJobSpec:
    w = spec.window
    out = streams_pb2.StreamJobSpec(
        key_fields=list(spec.key_fields),
        event_time_field=spec.event_time_field,
        window=streams_pb2.StreamWindow(
            kind=_KIND_OUT[w.kind],
            size=duration(w.size_ms / 1000) if w.size_ms else None,
            slide=duration(w.slide_ms / 1000) if w.slide_ms else None,
            gap=duration(w.gap_ms / 1000) if w.gap_ms else None,
        ),
        aggregations=[
            streams_pb2.StreamAggregation(
                function=_FUNCTION_OUT[a.function], field=a.field, name=a.output
            )
            for a in spec.aggregations
        ],
        watermark_delay=duration(spec.watermark_delay_ms / 1000),
        allowed_lateness=duration(spec.allowed_lateness_ms / 1000),
        idle_timeout=duration(spec.idle_timeout_ms / 1000) if spec.idle_timeout_ms else None,
        sink=streams_pb2.StreamSink(
            emit_events=spec.sink.emit_events,
            event_type=spec.sink.event_type,
            table=spec.sink.table,
            late_events=spec.sink.late_events,
        ),
    )
    if spec.source is None:
        out.push.SetInParent()
    else:
        src = spec.source
        out.events.types.extend(src.types)
        out.events.source = src.source
        out.events.subject = src.subject
        out.events.from_earliest = src.from_earliest
        for k, v in src.where.items():
            out.events.where[k].CopyFrom(to_value(v))
    return out


def job_to_proto(job: StreamJob) -> streams_pb2.StreamJob:
    c = job.counters
    out = streams_pb2.StreamJob(
        id=job.id,
        name=job.name,
        spec=spec_to_proto(job.spec),
        state=streams_pb2.STREAM_JOB_STATE_RETRYING
        if job.last_error
        else streams_pb2.STREAM_JOB_STATE_RUNNING,
        counters=streams_pb2.StreamJobCounters(
            records_accepted=c.accepted,
            records_late=c.late,
            records_rejected=c.rejected,
            windows_open=c.windows_open,
            windows_emitted=c.windows_emitted,
            inputs_consumed=c.inputs,
            checkpoints=c.checkpoints,
            idle_flushes=c.idle_flushes,
        ),
        create_time=timestamp(job.created_at),
        last_error=job.last_error,
    )
    if job.watermark_ms is not None:
        out.watermark.CopyFrom(timestamp(job.watermark_ms / 1000))
    if job.checkpoint_at:
        out.checkpoint_time.CopyFrom(timestamp(job.checkpoint_at))
    return out
