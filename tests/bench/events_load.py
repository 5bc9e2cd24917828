"""EventService load from a separate client process: batch throughput and delivery latency.

``run_publish_throughput`` and ``run_delivery_latency`` (called by the
benchmark) start ``python -m tests.bench.events_load <mode>``, which prints
one JSON line with the result.

``throughput``: publishes the warm-up events and then the measured events
through ``PublishBatch``, ``batch`` events per call with ``in_flight`` calls
outstanding, giving up when ``budget`` seconds have passed. Requests are
built and serialized before the clock starts, so the client spends its CPU
on the calls, not on protobuf. An event counts
only once its call has returned (the batch is committed), and every result
is checked: right count, no duplicate.

``latency``: one subscriber and one publisher in one process, so send and
receive times come from the same clock. The subscriber opens a new
subscription filtered on the probe type (``max_in_flight`` credits) and
acks everything it receives, batching whatever accumulated while the
previous ack was being written. The publisher sends single events with
``Publish`` on a fixed schedule (``rate`` per second, never back-to-back);
each event's data carries its index and its send time
(``time.perf_counter()``). Latency is receive time minus send time, so it
covers the publish call, the commit, the subscription's wake-up and
leasing, and the delivery. Events scheduled in the warm-up are checked for
exactly-once arrival like the rest, but left out of the percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format
from grpc import aio

from datamcp.v1 import events_pb2, events_pb2_grpc
from tests.bench.common import API_KEY_ENV, freeze_client_heap, run_client
from tests.bench.event_data import LATENCY_TYPE, bench_event
from tests.bench.load import CONNECT_TIMEOUT, percentile

PUBLISH = "/datamcp.v1.EventService/Publish"
PUBLISH_BATCH = "/datamcp.v1.EventService/PublishBatch"
CALL_TIMEOUT = 10.0
PUBLISH_TIMEOUT = 5.0
"""Deadline of one ``Publish`` in the latency run; shorter than the drain, so it ends within it."""
DRAIN_TIMEOUT = 10.0
"""Seconds the latency run waits, after its last scheduled publish, for publishes and
deliveries still on their way; what has not arrived by then counts as missing."""
DUPLICATE_GRACE = 0.25
"""Seconds it keeps listening once everything arrived, so an immediate duplicate is seen."""
START_SLACK = 10.0
"""Seconds a client subprocess gets beyond its own time budget: start-up, building requests."""


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """Outcome of a ``PublishBatch`` run; rate and counts cover the measured events.

    ``complete`` is False when the time budget ran out before every measured
    event was published; the rate then covers the events that were.
    ``errors`` counts failed calls, warm-up included.
    """

    events: int
    published: int
    seconds: float
    events_per_s: float
    batches: int
    batch_p50_ms: float
    batch_p99_ms: float
    duplicates: int
    errors: int
    error_codes: dict[str, int] = field(default_factory=dict)
    complete: bool = True
    server_cpu_us_per_event: float | None = None


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Outcome of a publish-to-subscriber run.

    Latencies (one per event: its first arrival) cover events scheduled in
    the measured window that arrived; ``measured`` counts them. ``published``
    is every event whose ``Publish`` returned OK (warm-up included), and the
    exactly-once check compares those with what arrived: ``missing`` had not
    arrived ``DRAIN_TIMEOUT`` seconds after the last scheduled publish (late
    or lost: a subscription that falls behind shows up here), ``duplicates``
    arrived more than once (``redelivered`` of them with attempt > 1),
    ``unexpected`` arrived without its ``Publish`` having returned OK.
    ``exactly_once`` needs every scheduled event published OK and none of
    the three.
    """

    target_rate: float
    publish_rate: float
    scheduled: int
    published: int
    publish_errors: int
    publish_error_codes: dict[str, int]
    publish_p50_ms: float
    publish_p99_ms: float
    max_send_lag_ms: float
    measured: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    received: int
    missing: int
    duplicates: int
    redelivered: int
    unexpected: int
    exactly_once: bool


# --- throughput ---------------------------------------------------------------------


def _cloud_event(fields: dict[str, Any]) -> events_pb2.CloudEvent:
    event = events_pb2.CloudEvent(
        id=fields["id"],
        source=fields["source"],
        type=fields["type"],
        subject=fields["subject"],
        datacontenttype=fields["datacontenttype"],
        correlation_id=fields["correlation_id"],
        traceparent=fields["traceparent"],
    )
    event.time.FromNanoseconds(int(fields["time"] * 1e9))
    json_format.ParseDict(fields["data"], event.data)
    return event


def _batches(run: str, first: int, count: int, batch: int) -> deque[tuple[bytes, int]]:
    """Serialized ``PublishBatchRequest``s (with their sizes) for events ``first`` onwards."""
    now = time.time()
    out: deque[tuple[bytes, int]] = deque()
    for start in range(first, first + count, batch):
        stop = min(start + batch, first + count)
        request = events_pb2.PublishBatchRequest(
            events=[_cloud_event(bench_event(run, i, now)) for i in range(start, stop)]
        )
        out.append((request.SerializeToString(), stop - start))
    return out


async def publish_throughput(
    target: str,
    *,
    events: int,
    batch: int,
    in_flight: int,
    warmup: int,
    budget: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ThroughputResult:
    run = secrets.token_hex(4)
    warm = _batches(run, 0, warmup, batch)
    measured = _batches(run, warmup, events, batch)
    async with aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
        call = channel.unary_unary(PUBLISH_BATCH)  # bytes in, bytes out
        codes: Counter[str] = Counter()
        duplicates = 0

        deadline = time.perf_counter() + budget

        async def send(work: deque[tuple[bytes, int]]) -> list[tuple[int, float]]:
            """Publish batches from ``work`` until it is empty or the budget is spent."""
            nonlocal duplicates
            done: list[tuple[int, float]] = []  # (events committed, call seconds)
            while work and time.perf_counter() < deadline:
                request, size = work.popleft()
                began = time.perf_counter()
                try:
                    raw = await call(request, metadata=metadata, timeout=CALL_TIMEOUT)
                except aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    continue
                took = time.perf_counter() - began
                results = events_pb2.PublishBatchResponse.FromString(raw).results
                if len(results) != size:
                    raise RuntimeError(f"PublishBatch answered {len(results)} results for {size}")
                dups = sum(r.duplicate for r in results)
                duplicates += dups
                done.append((size - dups, took))
            return done

        async def run_all(work: deque[tuple[bytes, int]]) -> list[tuple[int, float]]:
            parts = await asyncio.gather(*(send(work) for _ in range(in_flight)))
            return [item for part in parts for item in part]

        await run_all(warm)
        began = time.perf_counter()
        done = await run_all(measured)
        elapsed = time.perf_counter() - began

    published = sum(n for n, _ in done)
    calls = sorted(took for _, took in done)
    return ThroughputResult(
        events=events,
        published=published,
        seconds=round(elapsed, 4),
        events_per_s=round(published / elapsed, 1) if elapsed > 0 else 0.0,
        batches=len(done),
        batch_p50_ms=round(percentile(calls, 0.50) * 1000.0, 3),
        batch_p99_ms=round(percentile(calls, 0.99) * 1000.0, 3),
        duplicates=duplicates,
        errors=sum(codes.values()),
        error_codes=dict(codes),
        complete=not measured,
    )


# --- latency ------------------------------------------------------------------------


def _probe(run: str, n: int) -> events_pb2.CloudEvent:
    """Event ``n`` of the latency run, without time and data (filled in at send time)."""
    fields = bench_event(run, n, 0.0)
    event = events_pb2.CloudEvent(
        id=f"{fields['id']}-probe",
        source=fields["source"],
        type=LATENCY_TYPE,
        subject=fields["subject"],
        datacontenttype=fields["datacontenttype"],
        correlation_id=fields["correlation_id"],
        traceparent=fields["traceparent"],
    )
    return event


class _Subscriber:
    """Reads deliveries, stamps them on arrival, and acks them in batches."""

    def __init__(self, channel: aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.call = events_pb2_grpc.EventServiceStub(channel).Subscribe(metadata=metadata)
        self.arrivals: list[tuple[int, float, float, int]] = []  # (n, received, sent, attempt)
        self.arrived = asyncio.Event()
        self._unacked: list[int] = []
        self._ack_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, name: str, credits: int) -> None:
        open_ = events_pb2.SubscribeRequest.Open(
            subscription=name,
            filter=events_pb2.EventFilter(types=[LATENCY_TYPE]),
            max_in_flight=credits,
            start_position=events_pb2.START_POSITION_LATEST,
        )
        await self.call.write(events_pb2.SubscribeRequest(open=open_))
        first = await asyncio.wait_for(self.call.read(), CONNECT_TIMEOUT)
        if first is aio.EOF or first.WhichOneof("kind") != "subscribed":
            raise RuntimeError(f"Subscribe did not confirm the open: {first}")
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ack())]

    async def _read(self) -> None:
        while (message := await self.call.read()) is not aio.EOF:
            received = time.perf_counter()
            delivery = message.delivery
            data = delivery.event.data.struct_value.fields
            n = int(data["n"].number_value)
            self.arrivals.append((n, received, data["sent"].number_value, delivery.attempt))
            self._unacked.append(delivery.event.sequence)
            self._ack_due.set()
            self.arrived.set()

    async def _ack(self) -> None:
        Req = events_pb2.SubscribeRequest
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            seqs, self._unacked = self._unacked, []
            await self.call.write(Req(ack=Req.Ack(sequences=seqs)))

    def received(self) -> set[int]:
        """Indexes of the probes that arrived."""
        return {a[0] for a in self.arrivals}

    def check(self) -> None:
        """Raise the error of a reader or acker that stopped."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("the subscriber failed") from task.exception()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
                await task
        self.call.cancel()


class _Publisher:
    """Publishes probe ``n`` at ``start + n / rate``, each with its send time in its data."""

    def __init__(
        self,
        channel: aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        run: str,
        *,
        rate: float,
        total: int,
    ) -> None:
        self._call = channel.unary_unary(PUBLISH)  # bytes in, bytes out
        self._metadata = metadata
        self._probes = [_probe(run, n) for n in range(total)]
        self.total = total
        self.rate = rate
        self.start = 0.0
        self.sent_at: dict[int, float] = {}
        self.ok: set[int] = set()
        self.codes: Counter[str] = Counter()
        self.call_times: list[float] = []
        self.max_lag = 0.0
        self._calls: list[asyncio.Task[None]] = []

    async def run_schedule(self, subscriber: _Subscriber) -> None:
        """Send every probe at its time: sleep to the next slot, then send what
        is due (more than one only when the loop fell behind)."""
        total = self.total
        self.start = time.perf_counter() + 0.01
        n = 0
        while n < total:
            now = time.perf_counter()
            due = self.start + n / self.rate
            if now < due:
                await asyncio.sleep(due - now)
                continue
            while n < total and self.start + n / self.rate <= now:
                self.max_lag = max(self.max_lag, now - (self.start + n / self.rate))
                self._calls.append(asyncio.create_task(self._send(n)))
                n += 1
            subscriber.check()

    async def finish(self) -> None:
        """Wait for the calls still out; each ends within ``PUBLISH_TIMEOUT``."""
        await asyncio.gather(*self._calls)

    async def _send(self, n: int) -> None:
        event = self._probes[n]
        began = time.perf_counter()
        event.time.FromNanoseconds(time.time_ns())
        event.data.struct_value.update({"n": n, "sent": began})
        request = events_pb2.PublishRequest(event=event).SerializeToString()
        self.sent_at[n] = began
        try:
            raw = await self._call(request, metadata=self._metadata, timeout=PUBLISH_TIMEOUT)
        except aio.AioRpcError as exc:
            self.codes[exc.code().name] += 1
            return
        self.call_times.append(time.perf_counter() - began)
        if events_pb2.PublishResponse.FromString(raw).duplicate:
            raise RuntimeError(f"probe {n} was stored as a duplicate")
        self.ok.add(n)


async def delivery_latency(
    target: str,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    max_in_flight: int,
    metadata: tuple[tuple[str, str], ...] = (),
) -> LatencyResult:
    run = secrets.token_hex(4)
    # Publisher and subscriber on connections of their own, as two processes would be.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(target, options=options) for _ in range(2)]
    subscriber = _Subscriber(channels[0], metadata)
    publisher = _Publisher(
        channels[1], metadata, run, rate=rate, total=round((warmup + seconds) * rate)
    )
    try:
        await asyncio.gather(
            *(asyncio.wait_for(c.channel_ready(), CONNECT_TIMEOUT) for c in channels)
        )
        await subscriber.open(f"bench-latency-{run}", max_in_flight)
        await publisher.run_schedule(subscriber)
        # Wait for what is still on its way, then a moment longer for duplicates.
        deadline = time.perf_counter() + DRAIN_TIMEOUT
        await publisher.finish()
        while not publisher.ok <= subscriber.received() and time.perf_counter() < deadline:
            subscriber.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscriber.arrived.wait(), deadline - time.perf_counter())
            subscriber.check()
        await asyncio.sleep(DUPLICATE_GRACE)
        subscriber.check()
    finally:
        await subscriber.close()
        await asyncio.gather(*(c.close() for c in channels))
    return _summarise(publisher, subscriber.arrivals, window_start=publisher.start + warmup)


def _summarise(
    publisher: _Publisher,
    arrivals: Sequence[tuple[int, float, float, int]],
    *,
    window_start: float,
) -> LatencyResult:
    sent_at, ok = publisher.sent_at, publisher.ok
    counts = Counter(a[0] for a in arrivals)
    # One latency per event: a duplicate's second arrival is not a delivery latency.
    firsts: dict[int, float] = {}
    for n, received, sent, _ in arrivals:
        firsts.setdefault(n, received - sent)
    latencies = sorted(lat for n, lat in firsts.items() if sent_at.get(n, 0.0) >= window_start)
    duplicates = sum(c - 1 for c in counts.values())
    missing = len(ok - counts.keys())
    unexpected = len(counts.keys() - ok)
    call_times = sorted(publisher.call_times)
    span = max(sent_at.values()) - min(sent_at.values()) if sent_at else 0.0
    scheduled = publisher.total
    return LatencyResult(
        target_rate=publisher.rate,
        publish_rate=round((len(sent_at) - 1) / span, 1) if span > 0 else 0.0,
        scheduled=scheduled,
        published=len(ok),
        publish_errors=sum(publisher.codes.values()),
        publish_error_codes=dict(publisher.codes),
        publish_p50_ms=round(percentile(call_times, 0.50) * 1000.0, 3),
        publish_p99_ms=round(percentile(call_times, 0.99) * 1000.0, 3),
        max_send_lag_ms=round(publisher.max_lag * 1000.0, 3),
        measured=len(latencies),
        p50_ms=round(percentile(latencies, 0.50) * 1000.0, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000.0, 3),
        max_ms=round((latencies[-1] if latencies else 0.0) * 1000.0, 3),
        received=len(arrivals),
        missing=missing,
        duplicates=duplicates,
        redelivered=sum(1 for a in arrivals if a[3] > 1),
        unexpected=unexpected,
        exactly_once=len(ok) == scheduled and not (missing or duplicates or unexpected),
    )


# --- running the client -------------------------------------------------------------


def _run_client(args: list[str], timeout: float, api_key: str | None) -> dict[str, Any]:
    line = run_client("tests.bench.events_load", args, timeout=timeout, api_key=api_key)
    result: dict[str, Any] = json.loads(line)
    return result


def run_publish_throughput(
    target: str,
    *,
    events: int,
    batch: int,
    in_flight: int,
    warmup: int,
    budget: float,
    api_key: str | None = None,
) -> ThroughputResult:
    """Run the throughput client in a subprocess and return its result.

    Raises:
        RuntimeError: the client failed or printed no result.
    """
    args = [
        "throughput",
        f"--target={target}",
        f"--events={events}",
        f"--batch={batch}",
        f"--in-flight={in_flight}",
        f"--warmup={warmup}",
        f"--budget={budget}",
    ]
    return ThroughputResult(**_run_client(args, budget + START_SLACK, api_key))


def run_delivery_latency(
    target: str,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    max_in_flight: int,
    api_key: str | None = None,
) -> LatencyResult:
    """Run the latency client in a subprocess and return its result.

    Raises:
        RuntimeError: the client failed or printed no result.
    """
    args = [
        "latency",
        f"--target={target}",
        f"--rate={rate}",
        f"--seconds={seconds}",
        f"--warmup={warmup}",
        f"--max-in-flight={max_in_flight}",
    ]
    timeout = warmup + seconds + DRAIN_TIMEOUT + DUPLICATE_GRACE + START_SLACK
    return LatencyResult(**_run_client(args, timeout, api_key))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    tp = modes.add_parser("throughput", help="PublishBatch throughput")
    tp.add_argument("--target", required=True, help="HOST:PORT")
    tp.add_argument("--events", type=int, default=50_000, help="measured events")
    tp.add_argument("--batch", type=int, default=500, help="events per PublishBatch")
    tp.add_argument("--in-flight", type=int, default=4, help="batches outstanding")
    tp.add_argument("--warmup", type=int, default=2_000, help="unmeasured events first")
    tp.add_argument("--budget", type=float, default=30.0, help="seconds before giving up")
    lat = modes.add_parser("latency", help="publish-to-subscriber latency")
    lat.add_argument("--target", required=True, help="HOST:PORT")
    lat.add_argument("--rate", type=float, default=1000.0, help="events per second")
    lat.add_argument("--seconds", type=float, default=5.0, help="measured window")
    lat.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in")
    lat.add_argument("--max-in-flight", type=int, default=1000, help="subscriber credits")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    metadata = (("authorization", f"ApiKey {api_key}"),) if api_key else ()
    freeze_client_heap()
    result: ThroughputResult | LatencyResult
    if args.mode == "throughput":
        result = asyncio.run(
            publish_throughput(
                args.target,
                events=args.events,
                batch=args.batch,
                in_flight=args.in_flight,
                warmup=args.warmup,
                budget=args.budget,
                metadata=metadata,
            )
        )
    else:
        result = asyncio.run(
            delivery_latency(
                args.target,
                rate=args.rate,
                seconds=args.seconds,
                warmup=args.warmup,
                max_in_flight=args.max_in_flight,
                metadata=metadata,
            )
        )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
