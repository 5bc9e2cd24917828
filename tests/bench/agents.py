"""Section "agents": tasks on the built-in ``echo`` agent through the full stack.

The full side is the real ``datamcp serve`` as in the foundation section
(API key auth, a rate limiter sized never to trigger, a span for every
call) with SQLite in a temporary data directory and ``agents.queue_size``
raised to 100,000, on 127.0.0.1. Clients are separate processes.

1. ExecuteTask: the same closed-loop load (64 callers on 2 channels,
   ``BENCH_SECONDS`` window after a 1 s warm-up) runs ``ExecuteTask`` with a
   small JSON object for the ``echo`` capability against the full server,
   where each call stores the task, runs it and stores its final state, and
   against a bare ``grpc.aio`` server with no interceptors answering the same
   method with an echoed SUCCEEDED task and storing nothing
   (``tests.bench.bare_echo``). Every response must be SUCCEEDED. Runs
   alternate over 3 rounds and the best run of each side (highest QPS, with
   its latencies) is compared. Targets: QPS full/bare >= 0.6, p99 full/bare
   <= 2.0.
2. SubmitTask to completion: on a fresh full server, 500 unmeasured warm-up
   tasks, then ``BENCH_AGENT_TASKS`` echo tasks (default 20,000) through
   ``SubmitTask`` with 128 calls outstanding; the clock runs from the first
   submission until a ``ListTasks`` poll (every 20 ms, after the last
   submission returned) finds no task PENDING, QUEUED or RUNNING. Then every
   measured task is checked to have SUCCEEDED. Two runs, each on its own
   fresh server; the best valid one is compared, as with ExecuteTask (noise
   on this shared machine only makes a run slower; single runs spread
   +-15%). Target: >= 2,000 tasks/s.

Time is bounded at every step (server start 15 s; each ExecuteTask client
warm-up + window + its 30 s call deadline + 10 s; the SubmitTask client 15 s
warm-up + 60 s budget + 20 s check + 10 s; server stop 5 s); a normal run
takes about 110 s with the defaults.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tests.bench.agents_load import (
    EXECUTE,
    SubmitResult,
    run_execute_load,
    run_submit_throughput,
)
from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.foundation import _HEADER, Ratio, _machine, _ratio, _row
from tests.bench.full_server import full_server, new_api_key
from tests.bench.load import LoadResult
from tests.bench.procs import ServerProcess

NAME = "agents: echo tasks through the full stack"
RESULT_FILE = "agents.json"
TASKS_ENV = "BENCH_AGENT_TASKS"
DEFAULT_TASKS = 20_000
WARMUP_TASKS = 500
IN_FLIGHT = 128
"""SubmitTask calls outstanding; 64 and 256 were within noise of 128 on 2 cores."""
SUBMIT_BUDGET = 60.0
"""Seconds the measured submissions and their completion may take."""
ROUNDS = 3
SUBMIT_ROUNDS = 2
CONCURRENCY = 64
CHANNELS = 2
QPS_TARGET = 0.6
"""ExecuteTask full QPS / bare QPS must be at least this."""
P99_TARGET = 2.0
"""ExecuteTask full p99 / bare p99 must be at most this."""
TASKS_PER_S_TARGET = 2000.0
"""Submitted echo tasks completed per second must be at least this."""
AGENTS_TOML = """
[agents]
queue_size = 100000
"""


def tasks_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``BENCH_AGENT_TASKS``, or the default.

    Raises:
        ValueError: not a positive whole number.
    """
    env = os.environ if environ is None else environ
    text = env.get(TASKS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_TASKS
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{TASKS_ENV} must be a whole number of tasks > 0, got {text!r}")
    return int(text)


def _bare_port(line: str) -> int | None:
    text = line.strip()
    return int(text) if text.isdigit() else None


def bare_echo_server() -> ServerProcess:
    argv = [sys.executable, "-m", "tests.bench.bare_echo"]
    return ServerProcess("bare echo server", argv, port_stream="stdout", parse_port=_bare_port)


def run(config: BenchConfig) -> Mapping[str, Any]:
    """ExecuteTask comparison, then SubmitTask throughput; print, write ``agents.json``."""
    tasks = tasks_from_env()
    print(
        f"  full server (API key, rate limiter, tracing every call), SQLite in a temp dir\n"
        f"  execute: {EXECUTE} (echo), {CONCURRENCY} callers on {CHANNELS} channels, "
        f"{config.seconds:g} s after {config.warmup:g} s warm-up, {ROUNDS} rounds vs bare echo\n"
        f"  submit: {tasks:,} echo tasks (+{WARMUP_TASKS:,} warm-up), {IN_FLIGHT} SubmitTask "
        f"in flight, until all finished (budget {SUBMIT_BUDGET:g} s)",
        flush=True,
    )
    api_key = new_api_key()
    sides = ("bare", "full")
    runs: dict[str, list[LoadResult]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-agents-") as tmp:
        with ExitStack() as stack:
            servers = {
                "bare": stack.enter_context(bare_echo_server()),
                "full": stack.enter_context(
                    full_server(Path(tmp) / "execute", api_key, extra_toml=AGENTS_TOML)
                ),
            }
            print(f"\n  {_HEADER}", flush=True)
            for round_ in range(1, ROUNDS + 1):
                for side in sides:
                    key = None if side == "bare" else api_key
                    result = _measure_execute(servers[side], config, key)
                    runs[side].append(result)
                    print(f"  {_row(f'run {round_}', side, result)}", flush=True)
        submits: list[SubmitResult] = []
        for round_ in range(1, SUBMIT_ROUNDS + 1):
            # A fresh server: its task table holds only this run's tasks.
            workdir = Path(tmp) / f"submit-{round_}"
            with full_server(workdir, api_key, extra_toml=AGENTS_TOML) as server:
                submits.append(_measure_submit(server, tasks, api_key))
            print(f"  submit run {round_}: {submits[-1].tasks_per_s:,.1f} tasks/s", flush=True)

    best = {side: max(results, key=lambda r: r.qps) for side, results in runs.items()}
    valid = all(r.calls and not r.errors for r in (*runs["bare"], *runs["full"]))
    qps = Ratio(_ratio(best["full"].qps, best["bare"].qps), QPS_TARGET, True, valid)
    p99 = Ratio(_ratio(best["full"].p99_ms, best["bare"].p99_ms), P99_TARGET, False, valid)
    valid_submits = [r for r in submits if _submit_ok(r)]
    submit = max(valid_submits or submits, key=lambda r: r.tasks_per_s)
    submit_ok = bool(valid_submits)
    throughput = Ratio(submit.tasks_per_s, TASKS_PER_S_TARGET, True, submit_ok)
    _print_execute(best, qps, p99)
    _print_submit(submit, throughput)
    _warn(runs, submits)

    data: dict[str, Any] = {
        "section": NAME,
        "server": "full (API key, rate limiter, tracing sample_ratio 1.0), SQLite, "
        "agents.queue_size 100000",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "execute": {
            "method": EXECUTE,
            "capability": "echo",
            "concurrency": CONCURRENCY,
            "channels": CHANNELS,
            "seconds": config.seconds,
            "warmup": config.warmup,
            "rounds": ROUNDS,
            "runs": {side: [asdict(r) for r in results] for side, results in runs.items()},
            "best": {side: asdict(r) for side, r in best.items()},
        },
        "submit": {
            "warmup_tasks": WARMUP_TASKS,
            "budget": SUBMIT_BUDGET,
            **asdict(submit),
            "runs": [asdict(r) for r in submits],
        },
        "targets": {
            "execute_full_over_bare_qps": qps.to_dict(),
            "execute_full_over_bare_p99": p99.to_dict(),
            "submit_tasks_per_s": throughput.to_dict(),
        },
    }
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data


def _measure_execute(server: ServerProcess, config: BenchConfig, api_key: str | None) -> LoadResult:
    cpu_before = server.cpu_seconds()
    result = run_execute_load(
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


def _measure_submit(server: ServerProcess, tasks: int, api_key: str) -> SubmitResult:
    cpu_before = server.cpu_seconds()
    result = run_submit_throughput(
        f"127.0.0.1:{server.port}",
        tasks=tasks,
        warmup=WARMUP_TASKS,
        in_flight=IN_FLIGHT,
        channels=CHANNELS,
        budget=SUBMIT_BUDGET,
        api_key=api_key,
    )
    cpu_after = server.cpu_seconds()
    if cpu_before is None or cpu_after is None:
        return result
    # Over the whole client run: warm-up tasks, polls and the final check included.
    cpu_us = (cpu_after - cpu_before) / (tasks + WARMUP_TASKS) * 1e6
    return replace(result, server_cpu_us_per_task=round(cpu_us, 1))


def _print_execute(best: Mapping[str, LoadResult], qps: Ratio, p99: Ratio) -> None:
    print(f"\n  {_HEADER}")
    for side, result in best.items():
        print(f"  {_row('best', side, result)}")
    print(f"\n  {'full/bare':14} QPS  {qps.describe()}")
    print(f"  {'full/bare':14} p99  {p99.describe()}")
    cpu_bare = best["bare"].server_cpu_us_per_call
    cpu_full = best["full"].server_cpu_us_per_call
    if cpu_bare and cpu_full:
        share = cpu_full / cpu_bare
        print(f"  {'full/bare':14} server CPU per call  {share:5.2f}  (informational)")
    sys.stdout.flush()


def _print_submit(r: SubmitResult, throughput: Ratio) -> None:
    print(
        f"\n  {'submit':12} {'tasks':>7} {'tasks/s':>9} {'seconds':>8} {'submitting':>11}"
        f" {'submit p50':>11} {'submit p99':>11} {'errors':>7} {'srv cpu us/task':>16}"
    )
    cpu = "-" if r.server_cpu_us_per_task is None else f"{r.server_cpu_us_per_task:.0f}"
    print(
        f"  {'full server':12} {r.tasks:7d} {r.tasks_per_s:9.1f} {r.seconds:8.2f}"
        f" {r.submit_seconds:9.2f} s {r.submit_p50_ms:9.1f}ms {r.submit_p99_ms:9.1f}ms"
        f" {r.errors:7d} {cpu:>16}"
    )
    span = "-" if r.server_span_s is None else f"{r.server_span_s:.2f} s"
    print(
        f"  submitted {r.submitted:,}, succeeded {r.succeeded:,}, failed {r.failed:,}"
        f"{f' {r.failed_states}' if r.failed_states else ''}, unfinished {r.unfinished:,}; "
        f"server's first create to last end {span}; {r.polls} completion poll(s)"
    )
    if not r.complete:
        print(
            f"  (the {SUBMIT_BUDGET:g} s budget ran out before every task finished; "
            "the rate covers the tasks that had succeeded)"
        )
    print(f"\n  {'tasks/s':14}      {throughput.describe()}", flush=True)


def _submit_ok(r: SubmitResult) -> bool:
    return r.complete and not r.errors and not r.failed and r.succeeded == r.tasks


def _warn(runs: Mapping[str, list[LoadResult]], submits: list[SubmitResult]) -> None:
    for side, results in runs.items():
        errors = sum(r.errors for r in results)
        if errors:
            codes: dict[str, int] = {}
            for r in results:
                for code, count in r.error_codes.items():
                    codes[code] = codes.get(code, 0) + count
            warn(
                f"ExecuteTask on the {side} server ended {errors} calls with errors {codes}; "
                "the comparison is not valid until every call returns a SUCCEEDED task"
            )
    for i, submit in enumerate(submits, 1):
        if submit.errors or submit.warmup_errors or submit.failed or submit.unfinished:
            warn(
                f"SubmitTask run {i} failed {submit.errors} calls {submit.error_codes} "
                f"(+{submit.warmup_errors} in the warm-up), {submit.failed} tasks failed "
                f"{submit.failed_states} and {submit.unfinished} were unfinished at the "
                "check; that run's throughput figure is not valid"
            )
        elif not submit.complete:
            warn(
                f"SubmitTask run {i}: only {submit.succeeded:,} of {submit.tasks:,} tasks "
                f"succeeded within the {SUBMIT_BUDGET:g} s budget; that run's throughput "
                "figure is not valid"
            )


if __name__ == "__main__":
    run(BenchConfig.from_env())
