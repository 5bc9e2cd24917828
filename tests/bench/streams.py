"""Section "streams": records/s through a tumbling-window stream job.

Against the real ``datamcp serve`` (the full stack of the events section:
API key auth, a never-triggering rate limiter, tracing of every call),
SQLite in a temporary data directory, 127.0.0.1; the load runs in a
separate client process (``tests.bench.streams_load``). One run, same
records (``BENCH_STREAM_RECORDS``, default 50,000; 100 keys, event time
1 ms apart), same batch size (500) and concurrency (4), in this order:

1. baseline: the records as events through ``EventService.PublishBatch``
   (one record per event, all one subject), until committed;
2. push job: ``PushRecords`` into a push job with tumbling 10 s windows and
   count / sum / avg / min / max; "durable" when every call returned,
   "processed" when the job's checkpoint covers every record (windowed,
   aggregated, committed exactly once); the results are then checked
   (every window once, counts adding up);
3. bus job: a bus job reading the baseline's events (one subject) from the
   earliest, until its checkpoint covers them all.

Reported ratios against the baseline (same run): push processed / publish
(target >= 1.0: pushing records into a job, windowing included, is at least
as fast as merely storing them as events) and bus processed / publish
(informational: re-reading stored events one record per event). Each phase
has a 20 s budget, so a default run takes well under a minute.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.foundation import Ratio, _machine
from tests.bench.full_server import full_server, new_api_key
from tests.bench.streams_load import StreamsResult, run_streams

NAME = "streams: records/s through a tumbling-window job"
RESULT_FILE = "streams.json"
RECORDS_ENV = "BENCH_STREAM_RECORDS"
DEFAULT_RECORDS = 50_000
BATCH = 500
IN_FLIGHT = 4
PHASE_BUDGET = 20.0
PUSH_TARGET = 1.0
"""push-processed records/s / PublishBatch records/s must be at least this."""


def records_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``BENCH_STREAM_RECORDS``, or the default.

    Raises:
        ValueError: not a positive whole number.
    """
    env = os.environ if environ is None else environ
    text = env.get(RECORDS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_RECORDS
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{RECORDS_ENV} must be a whole number of records > 0, got {text!r}")
    return int(text)


def run(config: BenchConfig) -> Mapping[str, Any]:
    records = records_from_env()
    print(
        f"  full server (API key, rate limiter, tracing every call), SQLite in a temp dir\n"
        f"  {records:,} records, {BATCH} per call/message, {IN_FLIGHT} at once; "
        f"tumbling {10} s windows over 100 keys, 5 aggregates",
        flush=True,
    )
    api_key = new_api_key()
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-streams-") as tmp:
        with full_server(Path(tmp) / "full", api_key) as server:
            cpu_before = server.cpu_seconds()
            began = time.monotonic()
            result = run_streams(
                f"127.0.0.1:{server.port}",
                records=records,
                batch=BATCH,
                in_flight=IN_FLIGHT,
                budget=PHASE_BUDGET,
                api_key=api_key,
            )
            wall = time.monotonic() - began
            cpu_after = server.cpu_seconds()
    share = (
        None
        if cpu_before is None or cpu_after is None or not wall
        else round((cpu_after - cpu_before) / wall, 2)
    )
    base = result.publish_records_per_s
    push = Ratio(
        result.push_processed_records_per_s / base if base else 0.0,
        PUSH_TARGET,
        True,
        valid=result.push_valid,
    )
    bus_ratio = result.bus_records_per_s / base if base else 0.0
    _print(result, push, bus_ratio, share)
    if not result.push_valid:
        warn(f"the push job's results are wrong: {result.push_problem}")
    if not result.bus_valid:
        warn("the bus job did not account for every record exactly once")
    data: dict[str, Any] = {
        "section": NAME,
        "server": "full (API key, rate limiter, tracing sample_ratio 1.0), SQLite",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "result": asdict(result),
        "server_cpu_share": share,
        "targets": {
            "push_processed_over_publish_records_per_s": push.to_dict(),
            "bus_processed_over_publish_records_per_s": {"value": round(bus_ratio, 4)},
        },
    }
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data


def _print(r: StreamsResult, push: Ratio, bus_ratio: float, share: float | None) -> None:
    print(f"\n  {'path':34} {'records/s':>10} {'seconds':>8} {'checkpoints':>12}")
    rows = [
        ("PublishBatch (baseline)", r.publish_records_per_s, r.publish_seconds, ""),
        ("PushRecords, durable", r.push_durable_records_per_s, r.push_durable_seconds, ""),
        (
            "PushRecords, processed by the job",
            r.push_processed_records_per_s,
            r.push_processed_seconds,
            str(r.push_checkpoints),
        ),
        (
            "bus job, one subject, processed",
            r.bus_records_per_s,
            r.bus_seconds,
            str(r.bus_checkpoints),
        ),
    ]
    for name, rate, seconds, checkpoints in rows:
        print(f"  {name:34} {rate:10.1f} {seconds:8.2f} {checkpoints:>12}")
    print(
        f"  push job: {r.push_windows:,} windows emitted, results "
        f"{'exact' if r.push_valid else 'WRONG: ' + r.push_problem}"
    )
    if share is not None:
        print(f"  server CPU over the client run: {share:.2f} cores")
    print(f"\n  {'push/publish':14} records/s  {push.describe()}")
    print(f"  {'bus/publish':14} records/s  {bus_ratio:5.2f}  (informational)", flush=True)
