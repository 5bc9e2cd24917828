"""Section "foundation": what the full stack costs a unary RPC.

The same client load runs against a bare ``grpc.aio`` server and against the
real server with auth, rate limiting and tracing on, twice: recording a span
for every call (``full``, the figure the issue asks for) and with 10% head
sampling of new traces (``full@10%``, a typical production setting; callers
that send a sampled ``traceparent`` are always traced). Runs alternate so a
slow spell of the 2-core machine hits every side, and the best run of each
side (highest QPS, with that run's latencies) is compared: noise only ever
makes a run slower, so the best run is the one closest to what the code can do.

Time is bounded at every step (server start 15 s, each load run warm-up +
window + 10 s, server stop 5 s), so even a hang everywhere ends the default
run within two minutes; a normal run of this section takes about 60 s.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.full_server import full_server, new_api_key
from tests.bench.load import METHOD, LoadResult, run_load
from tests.bench.procs import ServerProcess

NAME = "foundation: unary RPC through full stack"
RESULT_FILE = "foundation.json"
ROUNDS = 3
FULL_SIDES = {"full": 1.0, "full@10%": 0.1}
"""Full-stack variants and their tracing sample ratio."""
CONCURRENCY = 64
CHANNELS = 2
"""On 2 cores, 1, 2 and 4 connections were within noise for the bare server; 2 never lost."""
QPS_TARGET = 0.8
"""full QPS / bare QPS must be at least this."""
P99_TARGET = 1.5
"""full p99 / bare p99 must be at most this."""


@dataclass(frozen=True, slots=True)
class Ratio:
    """A full/bare ratio against its target.

    ``valid`` is False when either side had errors or no calls: a ratio over
    failed calls means nothing, so it can neither pass nor miss.
    """

    value: float
    target: float
    higher_is_better: bool
    valid: bool = True

    @property
    def passed(self) -> bool:
        if not self.valid:
            return False
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    @property
    def verdict(self) -> str:
        if not self.valid:
            return "INVALID"
        return "PASS" if self.passed else "MISS"

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{self.value:5.2f}  (target {op} {self.target:.2f})  {self.verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4),
            "target": self.target,
            "verdict": self.verdict,
            "pass": self.passed,
        }


def _bare_port(line: str) -> int | None:
    text = line.strip()
    return int(text) if text.isdigit() else None


def bare_server() -> ServerProcess:
    argv = [sys.executable, "-m", "tests.bench.bare_server"]
    return ServerProcess("bare server", argv, port_stream="stdout", parse_port=_bare_port)


def run(config: BenchConfig) -> Mapping[str, Any]:
    """Alternate bare and full runs, print the comparison, write ``foundation.json``."""
    print(
        f"  {METHOD}, {CONCURRENCY} callers on {CHANNELS} channels, "
        f"{config.seconds:g} s after {config.warmup:g} s warm-up, {ROUNDS} rounds",
        flush=True,
    )
    api_key = new_api_key()
    sides = ["bare", *FULL_SIDES]
    runs: dict[str, list[LoadResult]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-") as tmp, ExitStack() as stack:
        servers = {"bare": stack.enter_context(bare_server())}
        for i, (side, ratio) in enumerate(FULL_SIDES.items()):
            workdir = Path(tmp) / f"full-{i}"
            servers[side] = stack.enter_context(full_server(workdir, api_key, ratio))
        print(f"\n  {_HEADER}", flush=True)
        for round_ in range(1, ROUNDS + 1):
            for side in sides:
                key = None if side == "bare" else api_key
                result = _measure(servers[side], config, key)
                runs[side].append(result)
                print(f"  {_row(f'run {round_}', side, result)}", flush=True)

    best = {side: max(results, key=lambda r: r.qps) for side, results in runs.items()}
    ratios: dict[str, dict[str, Ratio]] = {}
    for side in FULL_SIDES:
        valid = all(r.calls and not r.errors for r in (*runs["bare"], *runs[side]))
        ratios[side] = {
            "qps": Ratio(_ratio(best[side].qps, best["bare"].qps), QPS_TARGET, True, valid),
            "p99": Ratio(_ratio(best[side].p99_ms, best["bare"].p99_ms), P99_TARGET, False, valid),
        }
    _print_summary(best, ratios)
    _warn_on_errors(runs)

    data: dict[str, Any] = {
        "section": NAME,
        "method": METHOD,
        "concurrency": CONCURRENCY,
        "channels": CHANNELS,
        "seconds": config.seconds,
        "warmup": config.warmup,
        "rounds": ROUNDS,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "runs": {side: [asdict(r) for r in results] for side, results in runs.items()},
        "best": {side: asdict(r) for side, r in best.items()},
        "ratios": {
            f"{side}_over_bare_{name}": ratio.to_dict()
            for side, pair in ratios.items()
            for name, ratio in pair.items()
        },
    }
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data


def _measure(server: ServerProcess, config: BenchConfig, api_key: str | None) -> LoadResult:
    cpu_before = server.cpu_seconds()
    result = run_load(
        f"127.0.0.1:{server.port}",
        seconds=config.seconds,
        warmup=config.warmup,
        concurrency=CONCURRENCY,
        channels=CHANNELS,
        api_key=api_key,
    )
    cpu_after = server.cpu_seconds()
    if cpu_before is None or cpu_after is None or not result.total_calls:
        return result
    cpu_us = (cpu_after - cpu_before) / result.total_calls * 1e6
    return replace(result, server_cpu_us_per_call=round(cpu_us, 1))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


_HEADER = (
    f"{'':7} {'server':8} {'qps':>9} {'p50 ms':>8} {'p99 ms':>8} {'calls':>8} {'errors':>7}"
    f" {'srv cpu us/call':>16}"
)


def _row(label: str, side: str, r: LoadResult) -> str:
    cpu = "-" if r.server_cpu_us_per_call is None else f"{r.server_cpu_us_per_call:.0f}"
    return (
        f"{label:7} {side:8} {r.qps:9.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
        f"{r.calls:8d} {r.errors:7d} {cpu:>16}"
    )


def _print_summary(
    best: Mapping[str, LoadResult], ratios: Mapping[str, Mapping[str, Ratio]]
) -> None:
    print(f"\n  {_HEADER}")
    for side, result in best.items():
        print(f"  {_row('best', side, result)}")
    cpu_bare = best["bare"].server_cpu_us_per_call
    for side, pair in ratios.items():
        label = f"{side}/bare"
        print(f"\n  {label:14} QPS  {pair['qps'].describe()}")
        print(f"  {label:14} p99  {pair['p99'].describe()}")
        cpu = best[side].server_cpu_us_per_call
        if cpu_bare and cpu:
            print(f"  {label:14} server CPU per call  {cpu / cpu_bare:5.2f}  (informational)")
    sys.stdout.flush()


def _warn_on_errors(runs: Mapping[str, list[LoadResult]]) -> None:
    for side, results in runs.items():
        errors = sum(r.errors for r in results)
        if errors:
            codes: dict[str, int] = {}
            for r in results:
                for code, count in r.error_codes.items():
                    codes[code] = codes.get(code, 0) + count
            warn(
                f"the {side} server answered {errors} calls with errors {codes}; "
                "the comparison is not valid until it answers every call OK"
            )


def _machine() -> dict[str, Any]:
    sched: Callable[[int], set[int]] | None = getattr(os, "sched_getaffinity", None)
    return {
        "cpus": len(sched(0)) if sched else os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }
