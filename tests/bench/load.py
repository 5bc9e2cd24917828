"""Closed-loop load on ``GetHealthReport`` from a separate client process.

``run_load`` (called by the benchmark) starts ``python -m tests.bench.load``,
which runs ``concurrency`` callers on ``grpc.aio`` channels for a warm-up and
then a measured window, and prints one JSON line with the result.

The client sends pre-serialized request bytes and does not parse responses
in the hot loop (one probe response is parsed to check it is a real report):
on a 2-core machine the client competes with the server for CPU, and the
cheaper the client, the more the numbers say about the server. The same
client code is used against every server, so the comparison stays fair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grpc import aio

from datamcp.v1 import health_pb2
from tests.bench.common import API_KEY_ENV, freeze_client_heap, run_client

METHOD = "/datamcp.v1.HealthService/GetHealthReport"
"""The key travels in the environment, not argv, so ``ps`` does not show it."""
CALL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
START_SLACK = 10.0
"""Seconds a load subprocess gets beyond warm-up + window: start-up, connect, last calls."""


@dataclass(frozen=True, slots=True)
class CallSpec:
    """The RPC the callers repeat.

    ``probe`` checks one response before the load starts (raise if it is not
    the real thing). ``check``, when set, inspects every response and returns
    an error code to count it as failed, or "" for OK; leave it unset to keep
    the hot loop free of parsing.
    """

    method: str
    request: bytes
    probe: Callable[[bytes], None]
    check: Callable[[bytes], str] | None = None
    timeout: float = 5.0


def _probe_health(raw: bytes) -> None:
    response = health_pb2.GetHealthReportResponse.FromString(raw)
    if not response.report.components:
        raise RuntimeError(f"{METHOD} returned a report without components: {response}")


HEALTH_CALL = CallSpec(
    METHOD, health_pb2.GetHealthReportRequest().SerializeToString(), _probe_health
)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Outcome of one load run.

    ``calls``, ``qps`` and the latencies cover OK calls that completed in the
    measured window; ``errors`` counts every non-OK call, warm-up included,
    because any error at all means the run is not a valid comparison.
    ``total_calls`` counts every OK call, warm-up included, so the caller can
    divide the server's CPU time over the whole run by it.
    ``server_cpu_us_per_call`` is filled in by the caller, which can see the
    server process.
    """

    qps: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    error_codes: dict[str, int] = field(default_factory=dict)
    total_calls: int = 0
    server_cpu_us_per_call: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        data: dict[str, Any] = json.loads(text)
        return cls(
            qps=float(data["qps"]),
            p50_ms=float(data["p50_ms"]),
            p99_ms=float(data["p99_ms"]),
            calls=int(data["calls"]),
            errors=int(data["errors"]),
            error_codes={str(k): int(v) for k, v in data.get("error_codes", {}).items()},
            total_calls=int(data.get("total_calls", 0)),
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of already sorted values; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def open_channels(target: str, channels: int) -> list[aio.Channel]:
    # Without a local subchannel pool, channels to one target share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    return [aio.insecure_channel(target, options=options) for _ in range(channels)]


async def generate_load(
    target: str,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
    metadata: tuple[tuple[str, str], ...] = (),
    call: CallSpec = HEALTH_CALL,
) -> LoadResult:
    """Run the callers against ``target`` and measure them."""
    chans = open_channels(target, channels)
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), CONNECT_TIMEOUT) for c in chans))
        # No serializers: requests go out as bytes, responses come back as bytes.
        stubs = [c.unary_unary(call.method) for c in chans]
        request, check = call.request, call.check
        codes: Counter[str] = Counter()
        ok = int(await _probe(stubs[0], call, metadata, codes))

        latencies: list[float] = []
        start = time.perf_counter()
        window_start = start + warmup
        window_end = window_start + seconds

        async def caller(stub: aio.UnaryUnaryMultiCallable) -> None:
            nonlocal ok
            while True:
                began = time.perf_counter()
                if began >= window_end:
                    return
                try:
                    raw = await stub(request, metadata=metadata, timeout=call.timeout)
                except aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    continue
                ended = time.perf_counter()
                if check is not None and (code := check(raw)):
                    codes[code] += 1
                    continue
                ok += 1
                if window_start <= ended < window_end:
                    latencies.append(ended - began)

        await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in chans))

    latencies.sort()
    return LoadResult(
        qps=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000.0,
        p99_ms=percentile(latencies, 0.99) * 1000.0,
        calls=len(latencies),
        errors=sum(codes.values()),
        error_codes=dict(codes),
        total_calls=ok,
    )


async def _probe(
    stub: aio.UnaryUnaryMultiCallable,
    call: CallSpec,
    metadata: tuple[tuple[str, str], ...],
    codes: Counter[str],
) -> bool:
    """One call whose response is checked by ``call.probe`` before the load.

    Returns whether the call was OK (a failure is counted in ``codes``).
    """
    try:
        raw = await stub(call.request, metadata=metadata, timeout=call.timeout)
    except aio.AioRpcError as exc:
        codes[exc.code().name] += 1
        return False
    call.probe(raw)
    return True


def run_load(
    target: str,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
    api_key: str | None = None,
) -> LoadResult:
    """Run the load generator in a subprocess and return its result.

    Raises:
        RuntimeError: the client failed or printed no result.
    """
    args = [
        f"--target={target}",
        f"--seconds={seconds}",
        f"--warmup={warmup}",
        f"--concurrency={concurrency}",
        f"--channels={channels}",
    ]
    line = run_client(
        "tests.bench.load", args, timeout=warmup + seconds + START_SLACK, api_key=api_key
    )
    return LoadResult.from_json(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in")
    parser.add_argument("--concurrency", type=int, default=64, help="callers in flight")
    parser.add_argument("--channels", type=int, default=1, help="channels callers share")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    metadata = (("authorization", f"ApiKey {api_key}"),) if api_key else ()
    freeze_client_heap()
    result = asyncio.run(
        generate_load(
            args.target,
            seconds=args.seconds,
            warmup=args.warmup,
            concurrency=args.concurrency,
            channels=args.channels,
            metadata=metadata,
        )
    )
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
