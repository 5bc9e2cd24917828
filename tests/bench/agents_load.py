"""AgentService load from a separate client process: ExecuteTask calls and SubmitTask throughput.

``run_execute_load`` and ``run_submit_throughput`` (called by the benchmark)
start ``python -m tests.bench.agents_load <mode>``, which prints one JSON
line with the result.

``execute``: closed-loop ``ExecuteTask`` on the ``echo`` capability, the
same shape as the foundation's load (``concurrency`` callers on
``channels`` channels, a warm-up, then a measured window). The request is
serialized once; every response is parsed and must carry a task in state
SUCCEEDED (anything else counts as an error, under ``STATE_<name>``), so
the same client work is done against the full and the bare server.

``submit``: ``warmup`` unmeasured tasks, waited for, then ``tasks`` echo
tasks through ``SubmitTask`` with ``in_flight`` calls outstanding. Once
every submission has returned (so every task is stored), the client polls
``ListTasks`` for tasks still PENDING, QUEUED or RUNNING (one row asked for)
every ``POLL_INTERVAL`` s until there is none: that moment, less the moment
of the first submission, is the measured time. Then, unmeasured, it pages
through the SUCCEEDED and the failed tasks to check that every task
succeeded. Everything stops when ``budget`` seconds have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio

from datamcp.v1 import agents_pb2
from tests.bench.common import API_KEY_ENV, freeze_client_heap, run_client
from tests.bench.load import (
    CONNECT_TIMEOUT,
    START_SLACK,
    CallSpec,
    LoadResult,
    generate_load,
    open_channels,
    percentile,
)

EXECUTE = "/datamcp.v1.AgentService/ExecuteTask"
SUBMIT = "/datamcp.v1.AgentService/SubmitTask"
LIST = "/datamcp.v1.AgentService/ListTasks"
CAPABILITY = "echo"
CALL_TIMEOUT = 30.0
"""Deadline of one ExecuteTask / SubmitTask (the task's timeout follows it)."""
LIST_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
"""Seconds between completion polls: the measured time is at most this much late."""
VERIFY_TIMEOUT = 20.0
"""Seconds the unmeasured check of the final states may take."""
WARMUP_BUDGET = 15.0
"""Seconds the warm-up tasks may take (submitted and finished)."""
PAGE = 1000
UNFINISHED = (
    agents_pb2.TASK_STATE_PENDING,
    agents_pb2.TASK_STATE_QUEUED,
    agents_pb2.TASK_STATE_RUNNING,
)
FAILED = (
    agents_pb2.TASK_STATE_FAILED,
    agents_pb2.TASK_STATE_CANCELLED,
    agents_pb2.TASK_STATE_TIMED_OUT,
)


def echo_input() -> struct_pb2.Value:
    """A small JSON object, the task input (and the echo's result)."""
    value = struct_pb2.Value()
    value.struct_value.update(
        {"op": "bench", "n": 42, "ok": True, "tags": ["a", "b"], "ratio": 0.5}
    )
    return value


def task_request(kind: type[Any]) -> bytes:
    """A serialized ``ExecuteTaskRequest`` or ``SubmitTaskRequest`` for the echo capability."""
    return bytes(
        kind(
            task=agents_pb2.TaskSpec(capability=CAPABILITY, input=echo_input())
        ).SerializeToString()
    )


# --- execute ------------------------------------------------------------------------


def _probe_echo(raw: bytes) -> None:
    task = agents_pb2.ExecuteTaskResponse.FromString(raw).task
    if task.state != agents_pb2.TASK_STATE_SUCCEEDED or task.result != echo_input():
        raise RuntimeError(f"{EXECUTE} did not echo the input: {task}")


def _check_succeeded(raw: bytes) -> str:
    state = agents_pb2.ExecuteTaskResponse.FromString(raw).task.state
    if state == agents_pb2.TASK_STATE_SUCCEEDED:
        return ""
    return f"STATE_{agents_pb2.TaskState.Name(state)}"


async def execute_load(
    target: str,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
    metadata: tuple[tuple[str, str], ...] = (),
) -> LoadResult:
    """Closed-loop ExecuteTask callers; every response must be a SUCCEEDED task."""
    call = CallSpec(
        EXECUTE,
        task_request(agents_pb2.ExecuteTaskRequest),
        _probe_echo,
        _check_succeeded,
        CALL_TIMEOUT,
    )
    return await generate_load(
        target,
        seconds=seconds,
        warmup=warmup,
        concurrency=concurrency,
        channels=channels,
        metadata=metadata,
        call=call,
    )


def run_execute_load(
    target: str,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
    api_key: str | None = None,
) -> LoadResult:
    """Run the ExecuteTask load in a subprocess and return its result.

    Raises:
        RuntimeError: the client failed or printed no result.
    """
    args = [
        "execute",
        f"--target={target}",
        f"--seconds={seconds}",
        f"--warmup={warmup}",
        f"--concurrency={concurrency}",
        f"--channels={channels}",
    ]
    # A call started just before the window ends may take up to its deadline.
    timeout = warmup + seconds + CALL_TIMEOUT + START_SLACK
    line = run_client("tests.bench.agents_load", args, timeout=timeout, api_key=api_key)
    return LoadResult.from_json(line)


# --- submit -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """Outcome of a SubmitTask throughput run over the measured tasks.

    ``seconds`` runs from the first submission to the poll that found no
    unfinished task (``complete``); when the budget ran out first, to the end
    of the count of succeeded tasks after it. ``tasks_per_s`` is
    ``tasks / seconds`` when complete, else ``succeeded / seconds``. ``succeeded`` and
    ``failed`` are counted after the measurement, warm-up tasks excluded
    (none may fail). ``server_span_s`` is the server's own view: last
    end time less first create time of the measured tasks.
    """

    tasks: int
    in_flight: int
    submitted: int
    errors: int
    error_codes: dict[str, int] = field(default_factory=dict)
    warmup_errors: int = 0
    complete: bool = False
    seconds: float = 0.0
    submit_seconds: float = 0.0
    tasks_per_s: float = 0.0
    submit_p50_ms: float = 0.0
    submit_p99_ms: float = 0.0
    polls: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_states: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    server_span_s: float | None = None
    server_cpu_us_per_task: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SubmitResult:
        data: dict[str, Any] = json.loads(text)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def _list_request(states: Sequence[int], page_size: int, token: str = "") -> bytes:
    return bytes(
        agents_pb2.ListTasksRequest(
            states=list(states), page_size=page_size, page_token=token
        ).SerializeToString()
    )


async def _submit_all(
    stubs: Sequence[aio.UnaryUnaryMultiCallable],
    request: bytes,
    *,
    count: int,
    in_flight: int,
    metadata: tuple[tuple[str, str], ...],
    deadline: float,
    codes: Counter[str],
    latencies: list[float] | None,
) -> int:
    """Submit ``count`` tasks with ``in_flight`` outstanding; returns how many were stored."""
    next_index = 0
    stored = 0

    async def worker(stub: aio.UnaryUnaryMultiCallable) -> None:
        nonlocal next_index, stored
        while next_index < count and time.perf_counter() < deadline:
            next_index += 1
            began = time.perf_counter()
            try:
                await stub(request, metadata=metadata, timeout=CALL_TIMEOUT)
            except aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                continue
            stored += 1
            if latencies is not None:
                latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(in_flight)))
    return stored


async def _wait_finished(
    list_stub: aio.UnaryUnaryMultiCallable,
    metadata: tuple[tuple[str, str], ...],
    deadline: float,
) -> tuple[bool, int]:
    """Poll until no task is unfinished or ``deadline``; (finished, polls)."""
    request = _list_request(UNFINISHED, 1)
    polls = 0
    while True:
        polls += 1
        raw = await list_stub(request, metadata=metadata, timeout=LIST_TIMEOUT)
        if not agents_pb2.ListTasksResponse.FromString(raw).tasks:
            return True, polls
        if time.perf_counter() + POLL_INTERVAL >= deadline:
            return False, polls
        await asyncio.sleep(POLL_INTERVAL)


async def _count(
    list_stub: aio.UnaryUnaryMultiCallable,
    metadata: tuple[tuple[str, str], ...],
    states: Sequence[int],
    since: float,
) -> tuple[Counter[str], float | None, float | None]:
    """Tasks in ``states`` created at or after ``since`` (epoch s), by state name;
    with their first create time and last end time."""
    counts: Counter[str] = Counter()
    first: float | None = None
    last: float | None = None
    token = ""
    while True:
        raw = await list_stub(
            _list_request(states, PAGE, token), metadata=metadata, timeout=LIST_TIMEOUT
        )
        page = agents_pb2.ListTasksResponse.FromString(raw)
        older = False
        for task in page.tasks:
            created = task.create_time.ToNanoseconds() / 1e9
            if created < since:
                older = True  # newest first: the rest are warm-up tasks
                break
            counts[agents_pb2.TaskState.Name(task.state)] += 1
            first = created if first is None else min(first, created)
            if task.HasField("end_time"):
                ended = task.end_time.ToNanoseconds() / 1e9
                last = ended if last is None else max(last, ended)
        token = page.next_page_token
        if older or not token:
            return counts, first, last


async def _verify(
    list_stub: aio.UnaryUnaryMultiCallable,
    metadata: tuple[tuple[str, str], ...],
    since: float,
) -> tuple[Counter[str], float | None, float | None, Counter[str], Counter[str]]:
    """Succeeded (with first create and last end time), failed and unfinished tasks."""
    done, first, last = await _count(list_stub, metadata, (agents_pb2.TASK_STATE_SUCCEEDED,), since)
    failed, _, _ = await _count(list_stub, metadata, FAILED, since)
    left, _, _ = await _count(list_stub, metadata, UNFINISHED, since)
    return done, first, last, failed, left


async def submit_throughput(
    target: str,
    *,
    tasks: int,
    warmup: int,
    in_flight: int,
    channels: int,
    budget: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> SubmitResult:
    """Warm up, submit ``tasks`` echo tasks, wait for all to finish, check them."""
    chans = open_channels(target, channels)
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), CONNECT_TIMEOUT) for c in chans))
        stubs = [c.unary_unary(SUBMIT) for c in chans]
        list_stub = chans[0].unary_unary(LIST)
        request = task_request(agents_pb2.SubmitTaskRequest)
        warm_codes: Counter[str] = Counter()
        codes: Counter[str] = Counter()

        # Warm-up: connections, caches, the first commits; its tasks must finish first.
        warm_deadline = time.perf_counter() + min(budget, WARMUP_BUDGET)
        await _submit_all(
            stubs,
            request,
            count=warmup,
            in_flight=in_flight,
            metadata=metadata,
            deadline=warm_deadline,
            codes=warm_codes,
            latencies=None,
        )
        await _wait_finished(list_stub, metadata, warm_deadline)

        latencies: list[float] = []
        since = time.time()
        start = time.perf_counter()
        deadline = start + budget
        submitted = await _submit_all(
            stubs,
            request,
            count=tasks,
            in_flight=in_flight,
            metadata=metadata,
            deadline=deadline,
            codes=codes,
            latencies=latencies,
        )
        submit_seconds = time.perf_counter() - start
        complete, polls = await _wait_finished(list_stub, metadata, deadline)
        seconds = time.perf_counter() - start
        complete = complete and submitted == tasks

        done, first, last, failed, left = await asyncio.wait_for(
            _verify(list_stub, metadata, since), VERIFY_TIMEOUT
        )
        counted_at = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in chans))

    succeeded = done["TASK_STATE_SUCCEEDED"]
    latencies.sort()
    if complete:
        rate = tasks / seconds
    else:  # out of budget: what had succeeded by the time it was counted
        seconds = counted_at
        rate = succeeded / counted_at
    return SubmitResult(
        tasks=tasks,
        in_flight=in_flight,
        submitted=submitted,
        errors=sum(codes.values()),
        error_codes=dict(codes),
        warmup_errors=sum(warm_codes.values()),
        complete=complete,
        seconds=round(seconds, 4),
        submit_seconds=round(submit_seconds, 4),
        tasks_per_s=round(rate, 1),
        submit_p50_ms=round(percentile(latencies, 0.50) * 1000.0, 3),
        submit_p99_ms=round(percentile(latencies, 0.99) * 1000.0, 3),
        polls=polls,
        succeeded=succeeded,
        failed=sum(failed.values()),
        failed_states=dict(failed),
        unfinished=sum(left.values()),
        server_span_s=round(last - first, 4) if first is not None and last is not None else None,
    )


def run_submit_throughput(
    target: str,
    *,
    tasks: int,
    warmup: int,
    in_flight: int,
    channels: int,
    budget: float,
    api_key: str | None = None,
) -> SubmitResult:
    """Run the SubmitTask throughput client in a subprocess and return its result.

    Raises:
        RuntimeError: the client failed or printed no result.
    """
    args = [
        "submit",
        f"--target={target}",
        f"--tasks={tasks}",
        f"--warmup-tasks={warmup}",
        f"--in-flight={in_flight}",
        f"--channels={channels}",
        f"--budget={budget}",
    ]
    # Warm-up, measured run (its budget), check of the final states.
    timeout = min(budget, WARMUP_BUDGET) + budget + VERIFY_TIMEOUT + START_SLACK
    line = run_client("tests.bench.agents_load", args, timeout=timeout, api_key=api_key)
    return SubmitResult.from_json(line)


# --- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    execute = modes.add_parser("execute", help="closed-loop ExecuteTask")
    execute.add_argument("--target", required=True, help="HOST:PORT")
    execute.add_argument("--seconds", type=float, default=5.0, help="measured window")
    execute.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in")
    execute.add_argument("--concurrency", type=int, default=64, help="callers in flight")
    execute.add_argument("--channels", type=int, default=1, help="channels callers share")
    submit = modes.add_parser("submit", help="SubmitTask throughput to completion")
    submit.add_argument("--target", required=True, help="HOST:PORT")
    submit.add_argument("--tasks", type=int, default=20_000, help="measured tasks")
    submit.add_argument("--warmup-tasks", type=int, default=500, help="unmeasured tasks first")
    submit.add_argument("--in-flight", type=int, default=128, help="submissions outstanding")
    submit.add_argument("--channels", type=int, default=2, help="channels submissions share")
    submit.add_argument("--budget", type=float, default=60.0, help="seconds until giving up")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    metadata = (("authorization", f"ApiKey {api_key}"),) if api_key else ()
    freeze_client_heap()
    result: LoadResult | SubmitResult
    if args.mode == "execute":
        result = asyncio.run(
            execute_load(
                args.target,
                seconds=args.seconds,
                warmup=args.warmup,
                concurrency=args.concurrency,
                channels=args.channels,
                metadata=metadata,
            )
        )
    else:
        result = asyncio.run(
            submit_throughput(
                args.target,
                tasks=args.tasks,
                warmup=args.warmup_tasks,
                in_flight=args.in_flight,
                channels=args.channels,
                budget=args.budget,
                metadata=metadata,
            )
        )
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
