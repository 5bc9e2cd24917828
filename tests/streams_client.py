"""Test helpers for the stream-job RPCs: spec builders, pushing, waiting for
counters, reading window results back through EventService.Replay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format
from grpc import aio

from datamcp.config.settings import Settings
from datamcp.entrypoints.grpc.values import from_value, to_struct
from datamcp.v1 import events_pb2, events_pb2_grpc, pipelines_pb2_grpc
from datamcp.v1 import streams_pb2 as pb
from tests.support import RunningServer, running_server

Metadata = Sequence[tuple[str, str]]


@contextlib.asynccontextmanager
async def stream_server(settings: Settings) -> AsyncIterator[RunningServer]:
    """A real in-process server (PipelineService hosts the stream-job RPCs)."""
    async with running_server(settings) as rs:
        yield rs


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


ALL_AGGS = [
    pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_COUNT),
    pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_SUM, field="v"),
    pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_AVG, field="v"),
    pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_MIN, field="v"),
    pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_MAX, field="v"),
]


def job_spec(
    *,
    kind: int = pb.STREAM_WINDOW_KIND_TUMBLING,
    size: float = 0,
    slide: float = 0,
    gap: float = 0,
    delay: float = 0,
    lateness: float = 0,
    idle: float = 0,
    events: pb.StreamEventSource | None = None,
    table: str = "",
    emit: bool = True,
    late_events: bool = False,
    key_fields: Sequence[str] = ("k",),
    time_field: str = "t",
    aggregations: Sequence[pb.StreamAggregation] = ALL_AGGS,
) -> pb.StreamJobSpec:
    spec = pb.StreamJobSpec(
        key_fields=list(key_fields),
        event_time_field=time_field,
        window=pb.StreamWindow(kind=kind),
        aggregations=list(aggregations),
        watermark_delay=seconds(delay),
        allowed_lateness=seconds(lateness),
        idle_timeout=seconds(idle),
        sink=pb.StreamSink(emit_events=emit, table=table, late_events=late_events),
    )
    if size:
        spec.window.size.CopyFrom(seconds(size))
    if slide:
        spec.window.slide.CopyFrom(seconds(slide))
    if gap:
        spec.window.gap.CopyFrom(seconds(gap))
    if events is None:
        spec.push.SetInParent()
    else:
        spec.events.CopyFrom(events)
    return spec


class Streams:
    """Stubs over one channel plus the waits the tests need."""

    def __init__(self, channel: aio.Channel, metadata: Metadata = ()) -> None:
        self.stub = pipelines_pb2_grpc.PipelineServiceStub(channel)
        self.events = events_pb2_grpc.EventServiceStub(channel)
        self.md = tuple(metadata)

    async def create(self, spec: pb.StreamJobSpec, name: str = "job", **kw: Any) -> pb.StreamJob:
        response = await self.stub.CreateStreamJob(
            pb.CreateStreamJobRequest(job=pb.StreamJob(name=name, spec=spec), **kw),
            metadata=self.md,
        )
        return response.job

    async def get(self, job_id: str) -> pb.StreamJob:
        return (
            await self.stub.GetStreamJob(pb.GetStreamJobRequest(id=job_id), metadata=self.md)
        ).job

    async def push(
        self,
        job_id: str,
        batches: Iterable[Sequence[dict[str, Any]]],
        request_ids: Sequence[str] = (),
    ) -> pb.PushRecordsResponse:
        messages = [
            pb.PushRecordsRequest(
                job_id=job_id if i == 0 else "",
                records=[to_struct(r) for r in batch],
                request_id=request_ids[i] if i < len(request_ids) else "",
            )
            for i, batch in enumerate(batches)
        ]

        async def requests() -> AsyncIterator[pb.PushRecordsRequest]:
            for m in messages:
                yield m

        response: pb.PushRecordsResponse = await self.stub.PushRecords(requests(), metadata=self.md)
        return response

    async def wait(self, job_id: str, timeout: float = 20.0, **at_least: int) -> pb.StreamJob:
        """Poll until every named counter has reached its value."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            c = job.counters
            if all(getattr(c, name) >= value for name, value in at_least.items()):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"counters {c} never reached {at_least}")
            await asyncio.sleep(0.05)

    async def replay(self, types: Sequence[str], subject: str = "") -> list[events_pb2.CloudEvent]:
        call = self.events.Replay(
            events_pb2.ReplayRequest(
                filter=events_pb2.EventFilter(types=list(types), subject=subject)
            ),
            metadata=self.md,
        )
        return [r.event async for r in call]

    async def results(self, job_id: str) -> list[dict[str, Any]]:
        """The job's window events as plain data, in emission order."""
        events = await self.replay(["stream.window.closed"], subject=job_id)
        return [json_format.MessageToDict(e.data) for e in events]


def brief(results: Iterable[dict[str, Any]]) -> list[tuple[Any, float, float, dict[str, Any]]]:
    """(key, start, end, aggregates) per result, for exact comparisons."""
    return [(r["key"], r["window_start"], r["window_end"], r["aggregates"]) for r in results]


def aggs(n: int, total: float, low: float, high: float) -> dict[str, Any]:
    return {"count": n, "sum_v": total, "avg_v": total / n, "min_v": low, "max_v": high}


def value(v: Any) -> Any:
    return from_value(v)
