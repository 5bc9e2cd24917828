"""Replicas on one PostgreSQL database: what coordination costs, how fast
wake-ups cross, and what a second replica adds.

- Coordination cost: server CPU per echo task (ExecuteTask) with two
  replicas against one (target <= 1.15x), two ways, in alternating rounds
  (the median of each counts): the same callers per replica (16 each: what
  a second replica costs) and the same callers in all (16 split 8 + 8: a
  replica with half the load also commits half-size groups, see
  docs/performance.md#replicas).
- The same for events: server CPU per delivered event, one subscription,
  events published in batches, in alternating rounds, two ways: the same
  load per replica (one replica: 4 consumers and 4,000 events; two: 4
  consumers and half of 8,000 events published on each, all on one
  subscription) and the same load in all (4 consumers and 4,000 events
  split over two).
- Cross-replica latency, p50/p99, against the same replica: a published
  event to a subscriber, a task's final state to a WatchTask, a memory write
  to a WatchChanges watcher (target: within 2x).
- The write lock: how long one event group commit holds the append lock
  (PostgreSQL advisory lock, insert + commit) for 1 to 256 events, the
  figures behind the N-replica model in docs/performance.md#replicas.
- Scaling: echo tasks/s of two replicas pinned to separate cores against one
  (the load client shares the machine; docs/performance.md holds the cost
  model that predicts N replicas on N cores).

Needs PostgreSQL (``DATAMCP_TEST_PG_DSN`` or the local default); skipped
with a note when there is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from google.protobuf import struct_pb2
from grpc import aio
from sqlalchemy.engine import make_url

from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)
from tests.bench.common import BenchConfig, write_result
from tests.bench.full_server import new_api_key, parse_serving_port, write_config
from tests.bench.load import percentile
from tests.bench.procs import ServerProcess
from tests.events_client import Subscriber, cloud_event

NAME = "replicas"
RESULT_FILE = "replicas.json"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CONCURRENCY = 16  # callers per replica
SAMPLES = 100
ROUNDS = 3
#: Delivery rounds are short and noisier than the task ones: more of them
#: (their ratios are medians of paired rounds, see ``_paired_ratio``).
DELIVERY_ROUNDS = 9
DELIVERED = 4000  # events per delivery round and replica's load
CONSUMERS = 4  # consumers per replica's load


def _dsn() -> str:
    return os.environ.get("DATAMCP_TEST_PG_DSN") or DEFAULT_DSN


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped afterwards."""
    url = make_url(_dsn()).set(drivername="postgresql")
    name = f"bench_replicas_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(url.render_as_string(False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def replica(workdir: Path, api_key: str, database_url: str, cpu: int | None) -> ServerProcess:
    """A full server on ``database_url`` (pinned to core ``cpu`` when given)."""
    config = write_config(
        workdir,
        api_key,
        0.0,
        '[agents]\nplugins = ["tests.agent_plugins:SlowAgent"]\n',
        top_level=f'database_url = "{database_url}"',
    )
    argv = [
        *(["taskset", "-c", str(cpu)] if cpu is not None else []),
        sys.executable, "-m", "datamcp.entrypoints.cli", "serve",
        "--listen", "127.0.0.1:0", "--data-dir", str(workdir / "data"), "--config", str(config),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMCP_")}
    return ServerProcess(
        "replica", argv, port_stream="stderr", parse_port=parse_serving_port, env=env,
        startup_timeout=60,
    )  # fmt: skip


def _meta(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"ApiKey {api_key}"),)


async def _echo_load(
    targets: Sequence[str], api_key: str, seconds: float, warmup: float, callers: int
) -> tuple[int, float]:
    """Closed-loop ExecuteTask echo, callers split over ``targets``: (tasks, wall s)."""
    channels = [aio.insecure_channel(t) for t in targets]
    stubs = [agents_pb2_grpc.AgentServiceStub(c) for c in channels]
    spec = agents_pb2.TaskSpec(capability="echo", input=struct_pb2.Value(string_value="x"))
    request = agents_pb2.ExecuteTaskRequest(task=spec)
    counting = False
    done = 0
    stop = time.monotonic() + warmup + seconds

    async def caller(stub: agents_pb2_grpc.AgentServiceStub) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await stub.ExecuteTask(request, metadata=_meta(api_key), timeout=30)
            if counting:
                done += 1

    workers = [asyncio.create_task(caller(stubs[i % len(stubs)])) for i in range(callers)]
    await asyncio.sleep(warmup)
    counting, started = True, time.monotonic()
    await asyncio.gather(*workers)
    wall = time.monotonic() - started
    for c in channels:
        await c.close()
    return done, wall


def _load(
    servers: Sequence[ServerProcess], api_key: str, config: BenchConfig, callers: int = 0
) -> dict[str, Any]:
    before = [s.cpu_seconds() or 0.0 for s in servers]
    tasks, wall = asyncio.run(
        _echo_load(
            [f"127.0.0.1:{s.port}" for s in servers],
            api_key,
            config.seconds,
            config.warmup,
            callers or CONCURRENCY * len(servers),
        )
    )
    cpu = sum((s.cpu_seconds() or 0.0) - b for s, b in zip(servers, before, strict=True))
    return {
        "tasks": tasks,
        "tasks_per_s": round(tasks / wall, 1),
        # The warm-up's CPU is in the total too: per task over all calls made.
        "server_cpu_us_per_task": round(
            cpu / max(1, tasks) * 1e6 * wall / (wall + config.warmup), 1
        ),
    }


async def _event_latency(publish_to: str, receive_on: str, api_key: str) -> list[float]:
    meta = _meta(api_key)
    async with aio.insecure_channel(publish_to) as pub, aio.insecure_channel(receive_on) as rec:
        sub = Subscriber(rec, meta)
        await sub.open(f"lat-{uuid.uuid4().hex[:6]}", ["bench.latency"], credits=SAMPLES + 10)
        await asyncio.sleep(0.5)
        stub = events_pb2_grpc.EventServiceStub(pub)
        lags = []
        for i in range(SAMPLES):
            started = time.perf_counter()
            await stub.Publish(
                events_pb2.PublishRequest(event=cloud_event("bench.latency", f"e{i}", {"i": i})),
                metadata=meta,
            )
            delivery = await sub.next(timeout=10)
            lags.append((time.perf_counter() - started) * 1000)
            await sub.ack(delivery.event.sequence)
            await asyncio.sleep(0.01)
        sub.close()
    return lags


async def _watch_latency(submit_to: str, watch_on: str, api_key: str) -> list[float]:
    """Milliseconds from a task's end (its ended_at) to a WatchTask seeing it."""
    meta = _meta(api_key)
    payload = struct_pb2.Value()
    payload.struct_value.update({"seconds": 0.2})
    spec = agents_pb2.TaskSpec(capability="test.slow", input=payload)
    async with aio.insecure_channel(submit_to) as a, aio.insecure_channel(watch_on) as b:
        on_a, on_b = agents_pb2_grpc.AgentServiceStub(a), agents_pb2_grpc.AgentServiceStub(b)
        lags = []
        for _ in range(SAMPLES // 4):
            task = (
                await on_a.SubmitTask(agents_pb2.SubmitTaskRequest(task=spec), metadata=meta)
            ).task
            async for change in on_b.WatchTask(
                agents_pb2.WatchTaskRequest(id=task.id), metadata=meta
            ):
                if change.task.state == agents_pb2.TASK_STATE_SUCCEEDED:
                    ended = change.task.end_time.ToMicroseconds() / 1e6
                    lags.append((time.time() - ended) * 1000)
                    break
    return lags


async def _memory_latency(write_to: str, watch_on: str, api_key: str) -> list[float]:
    meta = _meta(api_key)
    namespace = f"lat{uuid.uuid4().hex[:6]}"
    async with aio.insecure_channel(write_to) as a, aio.insecure_channel(watch_on) as b:
        writer = memory_pb2_grpc.MemorySyncServiceStub(a)
        watcher = memory_pb2_grpc.MemorySyncServiceStub(b)
        stream = watcher.WatchChanges(
            memory_pb2.WatchChangesRequest(namespace_prefix=namespace), metadata=meta
        )
        await asyncio.sleep(0.5)
        lags = []
        for i in range(SAMPLES):
            started = time.perf_counter()
            await writer.Put(
                memory_pb2.PutRequest(
                    namespace=namespace, key="k", value=struct_pb2.Value(number_value=i)
                ),
                metadata=meta,
            )
            await asyncio.wait_for(stream.read(), 10)
            lags.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        stream.cancel()
    return lags


async def _deliver(
    publish_to: Sequence[str], consume_on: Sequence[str], api_key: str, loads: int
) -> int:
    """Publish ``loads`` x ``DELIVERED`` events (batches of 100, spread over
    ``publish_to``) to one subscription whose ``loads`` x ``CONSUMERS``
    consumers are spread over ``consume_on``; each delivery acked. Returns
    deliveries."""
    total = DELIVERED * loads
    meta = _meta(api_key)
    name = f"deliver-{uuid.uuid4().hex[:8]}"
    kind = f"bench.{name}"
    pubs = [aio.insecure_channel(t) for t in publish_to]
    subs = [aio.insecure_channel(consume_on[i % len(consume_on)]) for i in range(CONSUMERS * loads)]
    consumers = [Subscriber(ch, meta) for ch in subs]
    try:
        for c in consumers:
            await c.open(name, [kind], credits=200)
        got = 0

        async def consume(c: Subscriber) -> None:
            nonlocal got
            while got < total:
                try:
                    d = await c.next(timeout=2)
                except TimeoutError:
                    continue
                got += 1
                await c.ack(d.event.sequence)

        readers = [asyncio.create_task(consume(c)) for c in consumers]
        stubs = [events_pb2_grpc.EventServiceStub(ch) for ch in pubs]
        for b in range(total // 100):
            batch = [cloud_event(kind, f"{name}-{b}-{i}", {"i": i}) for i in range(100)]
            await stubs[b % len(stubs)].PublishBatch(
                events_pb2.PublishBatchRequest(events=batch), metadata=meta
            )
        await asyncio.wait_for(asyncio.gather(*readers), 120)
        return got
    finally:
        for c in consumers:
            c.close()
        for ch in [*pubs, *subs]:
            await ch.close()


def _deliver_load(
    servers: Sequence[ServerProcess],
    publish: Sequence[int],
    consume: Sequence[int],
    api_key: str,
    loads: int = 1,
) -> dict[str, Any]:
    """Server CPU per delivered event (publish, store, deliver, ack)."""
    before = [s.cpu_seconds() or 0.0 for s in servers]
    started = time.monotonic()
    ports = [f"127.0.0.1:{s.port}" for s in servers]
    got = asyncio.run(
        _deliver([ports[i] for i in publish], [ports[i] for i in consume], api_key, loads)
    )
    wall = time.monotonic() - started
    cpu = sum((s.cpu_seconds() or 0.0) - b for s, b in zip(servers, before, strict=True))
    return {
        "events": got,
        "events_per_s": round(got / wall, 1),
        "server_cpu_us_per_event": round(cpu / max(1, got) * 1e6, 1),
    }


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per task (each round's figures kept)."""
    ordered = sorted(results, key=lambda r: r["server_cpu_us_per_task"])
    return {
        **ordered[len(ordered) // 2],
        "rounds_cpu_us_per_task": [r["server_cpu_us_per_task"] for r in results],
    }


async def _append_lock_hold(url: str) -> dict[str, float]:
    """Median ms from an append's lock to its commit, by events per commit
    (one writer, so no waiting: the time other replicas' appends wait)."""
    from datamcp.adapters.sqlalchemy import migrate
    from datamcp.adapters.sqlalchemy.engine import create_engine
    from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork
    from datamcp.core.events.model import new_event

    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        out: dict[str, float] = {}
        for size in (1, 16, 64, 256):
            times = []
            for _ in range(30):
                batch = [
                    new_event(type="bench.lock", source="bench", data={"i": i}) for i in range(size)
                ]
                async with SqlUnitOfWork(engine) as tx:
                    started = time.perf_counter()
                    await tx.events.append(batch, time.time())
                    await tx.commit()
                    times.append((time.perf_counter() - started) * 1000)
            out[str(size)] = round(statistics.median(times), 2)
        return out
    finally:
        await engine.dispose()


def _summary(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
    }


def run(config: BenchConfig) -> dict[str, Any]:
    try:
        database = fresh_database()
        url = database.__enter__()
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"  skipped: no PostgreSQL at {_dsn()} ({exc})", flush=True)
        return {"section": NAME, "skipped": str(exc)}
    api_key = new_api_key()
    data: dict[str, Any] = {"section": NAME, "cores": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory(prefix="datamcp-bench-replicas-") as tmp:
            root = Path(tmp)
            with (
                replica(root / "a", api_key, url, None) as one,
                replica(root / "b", api_key, url, None) as two,
            ):
                runs: dict[str, list[dict[str, Any]]] = {}
                for _ in range(ROUNDS):
                    for name, servers, callers in (
                        ("one_replica", [one], CONCURRENCY),
                        ("two_replicas", [one, two], 2 * CONCURRENCY),
                        ("two_replicas_same_callers", [one, two], CONCURRENCY),
                    ):
                        runs.setdefault(name, []).append(_load(servers, api_key, config, callers))
                for name, results in runs.items():
                    data[name] = _median_run(results)
                delivered: dict[str, list[dict[str, Any]]] = {}
                for _ in range(DELIVERY_ROUNDS):
                    for name, publish, consume, loads in (
                        ("one_replica", [0], [0], 1),
                        ("two_replicas", [0, 1], [0, 1], 2),
                        ("two_replicas_same_load", [0, 1], [0, 1], 1),
                    ):
                        delivered.setdefault(name, []).append(
                            _deliver_load([one, two], publish, consume, api_key, loads)
                        )
                data["delivery"] = {
                    name: {
                        **sorted(runs_, key=lambda r: r["server_cpu_us_per_event"])[
                            len(runs_) // 2
                        ],
                        "rounds_cpu_us_per_event": [r["server_cpu_us_per_event"] for r in runs_],
                    }
                    for name, runs_ in delivered.items()
                }
                a, b = f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"
                latency: dict[str, Any] = {}
                for probe_name, probe in (
                    ("event", _event_latency),
                    ("watch_task", _watch_latency),
                    ("memory_watch", _memory_latency),
                ):
                    latency[probe_name] = {
                        "same": _summary(asyncio.run(probe(a, a, api_key))),
                        "cross": _summary(asyncio.run(probe(a, b, api_key))),
                    }
                data["latency"] = latency
            data["append_lock_hold_ms"] = asyncio.run(_append_lock_hold(url))
            if (os.cpu_count() or 1) >= 2:
                with replica(root / "p0", api_key, url, 0) as p0:
                    # The same offered load (callers) on one worker, then two.
                    offered = 2 * CONCURRENCY
                    data["pinned_one"] = _load([p0], api_key, config, offered)
                    with replica(root / "p1", api_key, url, 1) as p1:
                        data["pinned_two"] = _load([p0, p1], api_key, config, offered)
    finally:
        database.__exit__(None, None, None)
    _report(data)
    data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data


def _paired_ratio(other: dict[str, Any], base: dict[str, Any]) -> float:
    """The median of the per-round ratios: rounds alternate, so each pair ran
    under the same background load (a shared machine drifts between rounds
    more than the medians of the two sides differ)."""
    pairs = zip(other["rounds_cpu_us_per_event"], base["rounds_cpu_us_per_event"], strict=True)
    return statistics.median(a / max(1e-9, b) for a, b in pairs)


def _report(data: dict[str, Any]) -> None:
    """Print the figures (and add the ratios to ``data``)."""
    one, two = data["one_replica"], data["two_replicas"]
    split = data["two_replicas_same_callers"]
    cost = two["server_cpu_us_per_task"] / max(1e-9, one["server_cpu_us_per_task"])
    diluted = split["server_cpu_us_per_task"] / max(1e-9, one["server_cpu_us_per_task"])
    data["coordination_cost_ratio"] = round(cost, 2)
    data["split_load_cost_ratio"] = round(diluted, 2)
    print(
        f"  server CPU per echo task (median of {ROUNDS} alternating rounds): 1 replica "
        f"{one['server_cpu_us_per_task']} µs; 2 replicas, {CONCURRENCY} callers each "
        f"{two['server_cpu_us_per_task']} µs: {cost:.2f}x (target <= 1.15); 2 replicas "
        f"sharing {CONCURRENCY} callers {split['server_cpu_us_per_task']} µs: {diluted:.2f}x\n"
        f"  tasks/s: 1 replica {one['tasks_per_s']}, 2 replicas {two['tasks_per_s']} "
        f"({split['tasks_per_s']} sharing {CONCURRENCY} callers)",
        flush=True,
    )
    for name, sides in data["latency"].items():
        same, cross = sides["same"], sides["cross"]
        print(
            f"  {name}: same replica p50 {same['p50_ms']} / p99 {same['p99_ms']} ms, "
            f"cross p50 {cross['p50_ms']} / p99 {cross['p99_ms']} ms "
            f"({cross['p50_ms'] / max(0.01, same['p50_ms']):.2f}x / "
            f"{cross['p99_ms'] / max(0.01, same['p99_ms']):.2f}x; target <= 2)",
            flush=True,
        )
    delivery = data["delivery"]
    d1, d2 = delivery["one_replica"], delivery["two_replicas"]
    ds = delivery["two_replicas_same_load"]
    event_cost = _paired_ratio(d2, d1)
    event_split = _paired_ratio(ds, d1)
    data["event_coordination_cost_ratio"] = round(event_cost, 2)
    data["event_split_load_cost_ratio"] = round(event_split, 2)
    print(
        f"  server CPU per delivered event (one subscription, medians of {DELIVERY_ROUNDS} "
        f"alternating rounds, ratios the median of each round's): 1 replica "
        f"({CONSUMERS} consumers) "
        f"{d1['server_cpu_us_per_event']} µs; 2 replicas, {CONSUMERS} consumers and the "
        f"publishing each {d2['server_cpu_us_per_event']} µs: {event_cost:.2f}x (target <= "
        f"1.15); 2 replicas sharing {CONSUMERS} consumers {ds['server_cpu_us_per_event']} µs: "
        f"{event_split:.2f}x",
        flush=True,
    )
    holds = data["append_lock_hold_ms"]
    print(
        "  append lock held per group commit (events: ms): "
        + ", ".join(f"{n}: {ms}" for n, ms in holds.items()),
        flush=True,
    )
    if "pinned_two" in data:
        ratio = data["pinned_two"]["tasks_per_s"] / max(1e-9, data["pinned_one"]["tasks_per_s"])
        data["pinned_scaling"] = round(ratio, 2)
        print(
            f"  pinned to cores: 1 replica {data['pinned_one']['tasks_per_s']} tasks/s, "
            f"2 replicas {data['pinned_two']['tasks_per_s']} tasks/s: {ratio:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    run(BenchConfig.from_env())
