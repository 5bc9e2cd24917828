"""Stream-job load from a separate client process (``python -m tests.bench.streams_load``).

Prints one JSON line with three results over the same ``records`` records
(``{"k": <one of 100 keys>, "t": <event time>, "v": <number>}``, event time
advancing 1 ms per record):

1. ``publish`` (the baseline): the records as events (one record per
   event, all of ONE subject) through ``EventService.PublishBatch``,
   ``batch`` per call with ``in_flight`` calls outstanding; records/s until
   the last call returned (committed). Warm-up events of another type go
   first, unmeasured.
2. ``push``: a push stream job (tumbling 10 s windows keyed by ``k``, count
   / sum / avg / min / max of ``v``) fed the same records through
   ``PushRecords``, ``batch`` records per message, ``in_flight`` client
   streams at once. Two rates: ``durable`` (until every PushRecords call
   returned: the records are stored) and ``processed`` (until the job's
   ``records_accepted`` counter, i.e. its checkpoint, covers them all:
   windowed, aggregated and committed exactly once). A closing record then
   closes every window and the results are checked: every window emitted
   once, no record late or rejected, counts adding up to ``records``.
3. ``bus``: a bus stream job with the same windows, ``from_earliest``,
   reading the events published in 1 (one subject: the job's subscription
   does not serialise per subject, so it is consumed in batches): records/s
   from its creation until its checkpoint covers them all, and how many
   checkpoints that took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf import duration_pb2, json_format
from grpc import aio

from datamcp.entrypoints.grpc.values import to_struct
from datamcp.v1 import events_pb2, events_pb2_grpc, pipelines_pb2_grpc
from datamcp.v1 import streams_pb2 as pb
from tests.bench.common import API_KEY_ENV, freeze_client_heap, run_client
from tests.bench.load import CONNECT_TIMEOUT

KEYS = 100
WINDOW_SECONDS = 10
RECORD_TYPE = "bench.stream.reading"
WARMUP_TYPE = "bench.stream.warmup"
SUBJECT = "meter-1"
CALL_TIMEOUT = 30.0
POLL = 0.02
START_SLACK = 15.0
"""Seconds the client process gets beyond its phase budgets: start-up, building requests."""

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class StreamsResult:
    records: int
    batch: int
    in_flight: int
    publish_seconds: float
    publish_records_per_s: float
    push_durable_seconds: float
    push_durable_records_per_s: float
    push_processed_seconds: float
    push_processed_records_per_s: float
    push_checkpoints: int
    push_windows: int
    push_valid: bool
    push_problem: str
    bus_seconds: float
    bus_records_per_s: float
    bus_checkpoints: int
    bus_valid: bool


def record(i: int) -> dict[str, Any]:
    return {"k": f"key-{i % KEYS}", "t": i / 1000, "v": i % 97}


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def _spec(source: pb.StreamEventSource | None) -> pb.StreamJobSpec:
    spec = pb.StreamJobSpec(
        key_fields=["k"],
        event_time_field="t",
        window=pb.StreamWindow(kind=pb.STREAM_WINDOW_KIND_TUMBLING, size=_seconds(WINDOW_SECONDS)),
        aggregations=[
            pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_COUNT),
            pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_SUM, field="v"),
            pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_AVG, field="v"),
            pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_MIN, field="v"),
            pb.StreamAggregation(function=pb.STREAM_AGGREGATION_FUNCTION_MAX, field="v"),
        ],
        # Concurrent pushers interleave: nothing closes before the end.
        watermark_delay=_seconds(3600),
        sink=pb.StreamSink(emit_events=True),
    )
    if source is None:
        spec.push.SetInParent()
    else:
        spec.events.CopyFrom(source)
    return spec


def _publish_requests(run: str, type_: str, first: int, count: int, batch: int) -> list[bytes]:
    now = time.time()
    out = []
    for start in range(first, first + count, batch):
        events = []
        for i in range(start, min(start + batch, first + count)):
            event = events_pb2.CloudEvent(
                id=f"{run}-{type_}-{i}", source="/bench/streams", type=type_, subject=SUBJECT
            )
            event.time.FromNanoseconds(int(now * 1e9))
            json_format.ParseDict(record(i), event.data)
            events.append(event)
        out.append(events_pb2.PublishBatchRequest(events=events).SerializeToString())
    return out


async def _drain(work: list[Any], in_flight: int, send: Callable[[Any], Any]) -> None:
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            await send(queue.pop())

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def _wait_for(
    stub: pipelines_pb2_grpc.PipelineServiceStub,
    job_id: str,
    md: Metadata,
    budget: float,
    done: Callable[[pb.StreamJobCounters], bool],
) -> pb.StreamJob:
    deadline = time.perf_counter() + budget
    while True:
        reply = await stub.GetStreamJob(pb.GetStreamJobRequest(id=job_id), metadata=md)
        job: pb.StreamJob = reply.job
        if done(job.counters):
            return job
        if time.perf_counter() > deadline:
            raise RuntimeError(f"job {job_id} never got there in {budget:g} s: {reply.job}")
        await asyncio.sleep(POLL)


async def run(
    target: str, *, records: int, batch: int, in_flight: int, budget: float, md: Metadata
) -> StreamsResult:
    run_id = secrets.token_hex(4)
    warm = _publish_requests(run_id, WARMUP_TYPE, 0, min(records, 2000), batch)
    measured = _publish_requests(run_id, RECORD_TYPE, 0, records, batch)
    pushes = [
        pb.PushRecordsRequest(
            records=[to_struct(record(i)) for i in range(start, min(start + batch, records))]
        )
        for start in range(0, records, batch)
    ]
    async with aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
        stub = pipelines_pb2_grpc.PipelineServiceStub(channel)
        events = events_pb2_grpc.EventServiceStub(channel)
        publish = channel.unary_unary("/datamcp.v1.EventService/PublishBatch")

        async def send_batch(request: bytes) -> None:
            await publish(request, metadata=md, timeout=CALL_TIMEOUT)

        # 1. baseline
        await _drain(warm, in_flight, send_batch)
        began = time.perf_counter()
        await _drain(measured, in_flight, send_batch)
        publish_s = time.perf_counter() - began

        # 2. push job
        job = (
            await stub.CreateStreamJob(
                pb.CreateStreamJobRequest(job=pb.StreamJob(name="bench-push", spec=_spec(None))),
                metadata=md,
            )
        ).job
        lanes = [pushes[j::in_flight] for j in range(in_flight)]

        async def push_lane(lane: list[pb.PushRecordsRequest]) -> None:
            async def messages() -> AsyncIterator[pb.PushRecordsRequest]:
                for n, message in enumerate(lane):
                    if n == 0:
                        yield pb.PushRecordsRequest(job_id=job.id, records=message.records)
                    else:
                        yield message

            reply = await stub.PushRecords(messages(), metadata=md, timeout=budget)
            if reply.rejected:
                raise RuntimeError(f"{reply.rejected} records refused: {reply.rejections[:3]}")

        began = time.perf_counter()
        await asyncio.gather(*(push_lane(lane) for lane in lanes if lane))
        durable_s = time.perf_counter() - began
        pushed = await _wait_for(stub, job.id, md, budget, lambda c: c.records_accepted >= records)
        processed_s = time.perf_counter() - began
        # Close every window and check the results.
        closing = pb.PushRecordsRequest(job_id=job.id, records=[to_struct(record(10**9))])
        await stub.PushRecords(iter([closing]), metadata=md, timeout=CALL_TIMEOUT)
        expected_windows = len({(i % KEYS, (i // 1000) // WINDOW_SECONDS) for i in range(records)})
        final = await _wait_for(
            stub, job.id, md, budget, lambda c: c.windows_emitted >= expected_windows
        )
        problem = await _check(events, md, final, records=records, windows=expected_windows)

        # 3. bus job over the baseline's one-subject events
        source = pb.StreamEventSource(types=[RECORD_TYPE], from_earliest=True)
        began = time.perf_counter()
        bus = (
            await stub.CreateStreamJob(
                pb.CreateStreamJobRequest(job=pb.StreamJob(name="bench-bus", spec=_spec(source))),
                metadata=md,
            )
        ).job
        consumed = await _wait_for(
            stub, bus.id, md, budget, lambda c: c.records_accepted >= records
        )
        bus_s = time.perf_counter() - began
    c = consumed.counters
    return StreamsResult(
        records=records,
        batch=batch,
        in_flight=in_flight,
        publish_seconds=round(publish_s, 4),
        publish_records_per_s=round(records / publish_s, 1),
        push_durable_seconds=round(durable_s, 4),
        push_durable_records_per_s=round(records / durable_s, 1),
        push_processed_seconds=round(processed_s, 4),
        push_processed_records_per_s=round(records / processed_s, 1),
        push_checkpoints=pushed.counters.checkpoints,
        push_windows=final.counters.windows_emitted,
        push_valid=not problem,
        push_problem=problem,
        bus_seconds=round(bus_s, 4),
        bus_records_per_s=round(records / bus_s, 1),
        bus_checkpoints=c.checkpoints,
        bus_valid=(c.records_accepted, c.records_late, c.records_rejected) == (records, 0, 0),
    )


async def _check(
    events: events_pb2_grpc.EventServiceStub,
    md: Metadata,
    job: pb.StreamJob,
    *,
    records: int,
    windows: int,
) -> str:
    """Empty when the job's results are exact, else what is wrong."""
    c = job.counters
    if (c.records_accepted, c.records_late, c.records_rejected) != (records + 1, 0, 0):
        return f"counters off: {c}"
    call = events.Replay(
        events_pb2.ReplayRequest(
            filter=events_pb2.EventFilter(types=["stream.window.closed"], subject=job.id)
        ),
        metadata=md,
    )
    results = [json_format.MessageToDict(r.event.data) async for r in call]
    if len(results) != windows or c.windows_emitted != windows:
        return f"{len(results)} window results (counter {c.windows_emitted}), expected {windows}"
    total = sum(int(r["count"]) for r in results)
    if total != records:
        return f"window counts add up to {total}, expected {records}"
    return ""


def run_streams(
    target: str, *, records: int, batch: int, in_flight: int, budget: float, api_key: str | None
) -> StreamsResult:
    """Run the client process and parse its result."""
    args = [
        "all",
        f"--target={target}",
        f"--records={records}",
        f"--batch={batch}",
        f"--in-flight={in_flight}",
        f"--budget={budget}",
    ]
    line = run_client(
        "tests.bench.streams_load", args, timeout=4 * budget + START_SLACK, api_key=api_key
    )
    return StreamsResult(**json.loads(line))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    every = modes.add_parser("all", help="baseline, push job and bus job")
    every.add_argument("--target", required=True, help="HOST:PORT")
    every.add_argument("--records", type=int, default=50_000)
    every.add_argument("--batch", type=int, default=500, help="records per call / message")
    every.add_argument("--in-flight", type=int, default=4, help="calls or streams at once")
    every.add_argument("--budget", type=float, default=20.0, help="seconds per phase")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    md: Metadata = (("authorization", f"ApiKey {api_key}"),) if api_key else ()
    freeze_client_heap()
    result = asyncio.run(
        run(
            args.target,
            records=args.records,
            batch=args.batch,
            in_flight=args.in_flight,
            budget=args.budget,
            md=md,
        )
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
