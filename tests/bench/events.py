"""Section "events": durable publish throughput and publish-to-subscriber latency.

Everything runs against the real ``datamcp serve`` (the same full stack as
the foundation section: API key auth, a rate limiter sized never to
trigger, tracing of every call) with SQLite in a temporary data directory,
on 127.0.0.1. Clients are separate processes, as in the foundation section.

1. Publish throughput: ``BENCH_EVENTS`` events (default 50,000, after 2,000
   unmeasured warm-up events) through ``PublishBatch``, 500 per batch with 4
   batches in flight; an event counts once its call returned, i.e. once it
   is committed. The baseline, measured in the same run, is a raw
   ``sqlite3`` process inserting the same rows into the same ``events``
   table (same DDL and pragmas as the server) with ``executemany``, one
   transaction per batch of the same size. Target: full/raw >= 0.5.
2. Delivery latency: one client process holds a subscriber (a new
   subscription filtered on the probe type, 1,000 credits, acking every
   delivery) and a publisher sending single events with ``Publish`` on a
   fixed 1,000 events/s schedule for the configured window (``BENCH_SECONDS``,
   default 5 s) after a 1 s warm-up. Latency is receive time minus the send
   time carried in the event, on one clock. Target: p99 < 10 ms, with every
   event delivered exactly once.

One run of each, not best-of-rounds: the throughput run alone is tens of
thousands of calls' worth of work, and the latency run is a schedule, not a
race. Time is bounded at every step (server start 15 s, baseline 20 s,
throughput client 40 s, latency client warm-up + window + 20.25 s, server
stop 5 s), so even a hang everywhere ends the default run within two
minutes; a normal run takes well under one.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.events_load import (
    DRAIN_TIMEOUT,
    LatencyResult,
    ThroughputResult,
    run_delivery_latency,
    run_publish_throughput,
)
from tests.bench.foundation import Ratio, _machine
from tests.bench.full_server import full_server, new_api_key
from tests.bench.procs import ServerProcess
from tests.bench.sqlite_baseline import BaselineResult, run_sqlite_baseline

NAME = "events: durable publish and delivery latency"
RESULT_FILE = "events.json"
EVENTS_ENV = "BENCH_EVENTS"
DEFAULT_EVENTS = 50_000
WARMUP_EVENTS = 2_000
BATCH = 500
IN_FLIGHT = 4
THROUGHPUT_BUDGET = 30.0
"""Seconds the throughput client may publish; what is committed by then is measured."""
RATE = 1000.0
MAX_IN_FLIGHT = 1000
THROUGHPUT_TARGET = 0.5
"""full events/s / raw sqlite3 events/s must be at least this."""
P99_TARGET_MS = 10.0
"""publish-to-subscriber p99 must be below this."""

T = TypeVar("T")


def events_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``BENCH_EVENTS``, or the default.

    Raises:
        ValueError: not a positive whole number.
    """
    env = os.environ if environ is None else environ
    text = env.get(EVENTS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_EVENTS
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{EVENTS_ENV} must be a whole number of events > 0, got {text!r}")
    return int(text)


def run(config: BenchConfig) -> Mapping[str, Any]:
    """Baseline, throughput and latency runs; print the report, write ``events.json``."""
    events = events_from_env()
    print(
        f"  full server (API key, rate limiter, tracing every call), SQLite in a temp dir\n"
        f"  publish: {events:,} events (+{WARMUP_EVENTS:,} warm-up), {BATCH}/PublishBatch, "
        f"{IN_FLIGHT} batches in flight\n"
        f"  latency: Publish at {RATE:g}/s for {config.seconds:g} s after {config.warmup:g} s "
        f"warm-up, 1 subscriber with {MAX_IN_FLIGHT} credits",
        flush=True,
    )
    api_key = new_api_key()
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-events-") as tmp:
        raw = run_sqlite_baseline(
            Path(tmp) / "raw" / "events.db", events=events, batch=BATCH, warmup=WARMUP_EVENTS
        )
        with full_server(Path(tmp) / "full", api_key) as server:
            target = f"127.0.0.1:{server.port}"
            full, throughput_cpu = _measured(
                server,
                lambda: run_publish_throughput(
                    target,
                    events=events,
                    batch=BATCH,
                    in_flight=IN_FLIGHT,
                    warmup=WARMUP_EVENTS,
                    budget=THROUGHPUT_BUDGET,
                    api_key=api_key,
                ),
            )
            if throughput_cpu is not None and full.published:
                cpu_us = throughput_cpu[0] / (full.published + WARMUP_EVENTS) * 1e6
                full = replace(full, server_cpu_us_per_event=round(cpu_us, 1))
            latency, latency_cpu = _measured(
                server,
                lambda: run_delivery_latency(
                    target,
                    rate=RATE,
                    seconds=config.seconds,
                    warmup=config.warmup,
                    max_in_flight=MAX_IN_FLIGHT,
                    api_key=api_key,
                ),
            )

    throughput_ratio = Ratio(
        full.events_per_s / raw.events_per_s if raw.events_per_s else 0.0,
        THROUGHPUT_TARGET,
        True,
        valid=bool(full.published) and not full.errors and not full.duplicates,
    )
    p99 = Ratio(latency.p99_ms, P99_TARGET_MS, False, valid=bool(latency.measured))
    _print_throughput(raw, full, throughput_ratio, throughput_cpu)
    _print_latency(latency, p99, latency_cpu)
    _warn(full, latency)

    data: dict[str, Any] = {
        "section": NAME,
        "server": "full (API key, rate limiter, tracing sample_ratio 1.0), SQLite",
        "events": events,
        "warmup_events": WARMUP_EVENTS,
        "batch": BATCH,
        "in_flight": IN_FLIGHT,
        "rate": RATE,
        "max_in_flight": MAX_IN_FLIGHT,
        "seconds": config.seconds,
        "warmup": config.warmup,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "raw_sqlite": asdict(raw),
        "full_publish": asdict(full),
        "full_publish_server_cpu_share": _share(throughput_cpu),
        "latency": asdict(latency),
        "latency_server_cpu_share": _share(latency_cpu),
        "targets": {
            "full_over_raw_events_per_s": throughput_ratio.to_dict(),
            "latency_p99_ms": p99.to_dict(),
            "exactly_once": {"value": latency.exactly_once, "pass": latency.exactly_once},
        },
    }
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data


def _measured(server: ServerProcess, work: Callable[[], T]) -> tuple[T, tuple[float, float] | None]:
    """``work()``, with the server's CPU seconds and the wall seconds it took."""
    cpu_before = server.cpu_seconds()
    began = time.monotonic()
    result = work()
    wall = time.monotonic() - began
    cpu_after = server.cpu_seconds()
    if cpu_before is None or cpu_after is None:
        return result, None
    return result, (cpu_after - cpu_before, wall)


def _share(cpu: tuple[float, float] | None) -> float | None:
    """Server CPU seconds per wall second of a client run (1.0 = one core busy)."""
    return None if cpu is None or not cpu[1] else round(cpu[0] / cpu[1], 2)


def _print_throughput(
    raw: BaselineResult, full: ThroughputResult, ratio: Ratio, cpu: tuple[float, float] | None
) -> None:
    print(
        f"\n  {'publish':12} {'events/s':>10} {'seconds':>8} {'batch p50':>10} {'batch p99':>10}"
        f" {'errors':>7} {'dups':>5} {'srv cpu us/event':>17}"
    )
    print(f"  {'raw sqlite3':12} {raw.events_per_s:10.1f} {raw.seconds:8.2f}")
    cpu_us = "-" if full.server_cpu_us_per_event is None else f"{full.server_cpu_us_per_event:.0f}"
    print(
        f"  {'full server':12} {full.events_per_s:10.1f} {full.seconds:8.2f}"
        f" {full.batch_p50_ms:8.1f}ms {full.batch_p99_ms:8.1f}ms"
        f" {full.errors:7d} {full.duplicates:5d} {cpu_us:>17}"
    )
    if not full.complete:
        print(
            f"  (budget of {THROUGHPUT_BUDGET:g} s ran out: {full.published:,} of "
            f"{full.events:,} events published; the rate covers those)"
        )
    share = _share(cpu)
    if share is not None:
        print(f"  server CPU over the client run (incl. its start-up): {share:.2f} cores")
    print(f"\n  {'full/raw':14} events/s  {ratio.describe()}", flush=True)


def _print_latency(r: LatencyResult, p99: Ratio, cpu: tuple[float, float] | None) -> None:
    print(
        f"\n  {'delivery':12} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'publish p50':>12} {'publish p99':>12} {'send lag':>9}"
    )
    print(
        f"  {'full server':12} {r.publish_rate:8.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}"
        f" {r.max_ms:8.2f} {r.publish_p50_ms:10.2f}ms {r.publish_p99_ms:10.2f}ms"
        f" {r.max_send_lag_ms:7.1f}ms"
    )
    print(
        f"  scheduled {r.scheduled:,}, published OK {r.published:,} (errors "
        f"{r.publish_errors}), received {r.received:,}; missing {r.missing:,}, "
        f"duplicates {r.duplicates}, redelivered {r.redelivered}, unexpected {r.unexpected}"
    )
    share = _share(cpu)
    if share is not None:
        print(f"  server CPU over the client run (incl. its start-up): {share:.2f} cores")
    if r.missing:
        print(
            f"  ({r.missing:,} events had not arrived {DRAIN_TIMEOUT:g} s after the last "
            "publish, so the percentiles, over the events that did arrive, flatter the server)"
        )
    print(f"\n  {'p99 latency':14} ms        {p99.describe()}")
    once = "PASS" if r.exactly_once else "MISS"
    print(
        f"  {'exactly once':14}           {'yes' if r.exactly_once else 'no':>5}  {once}",
        flush=True,
    )


def _warn(full: ThroughputResult, latency: LatencyResult) -> None:
    if full.errors or full.duplicates:
        warn(
            f"PublishBatch failed {full.errors} calls {full.error_codes} and stored "
            f"{full.duplicates} events as duplicates; the throughput figure is not valid"
        )
    if latency.publish_errors:
        warn(
            f"Publish failed {latency.publish_errors} calls {latency.publish_error_codes} "
            "in the latency run"
        )
