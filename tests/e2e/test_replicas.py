"""Real replica processes on one PostgreSQL database: they start together on
an empty database, share work, and take over the work of a replica that
stops answering (frozen: its pid lives on, as on another host) or is
killed with SIGKILL, within seconds and with one final state per task."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from datamcp.entrypoints.grpc.values import to_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc, events_pb2_grpc
from tests.agent_plugins import PLUGINS
from tests.e2e.test_workers import free_port
from tests.integration.test_replica_signals import _task_events
from tests.support import ServerProcess, server_process

pytestmark = pytest.mark.pg

S = pb.TaskState
FINALS = {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}


@contextlib.contextmanager
def replicas(tmp_path: Path, pg_database: str, count: int) -> Iterator[list[ServerProcess]]:
    """``count`` replicas started at the same moment on one database."""
    env = {"DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS), "DATAMCP_RATE_LIMIT_ENABLED": "false"}
    with contextlib.ExitStack() as stack:
        procs = []
        for i in range(count):
            args = (
                "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / str(i)),
                "--database-url", pg_database,
            )  # fmt: skip
            procs.append(stack.enter_context(server_process(*args, env=env, timeout=90)))
        yield procs


async def submit(stub: agents_pb2_grpc.AgentServiceStub, seconds: float, marker: Path) -> pb.Task:
    payload = {"seconds": seconds, "marker": str(marker)}
    spec = pb.TaskSpec(capability="test.slow", input=to_value(payload))
    return (await stub.SubmitTask(pb.SubmitTaskRequest(task=spec), timeout=10)).task


async def states(stub: agents_pb2_grpc.AgentServiceStub, ids: list[str]) -> list[pb.Task]:
    return [(await stub.GetTask(pb.GetTaskRequest(id=i), timeout=5)).task for i in ids]


def runs(marker: Path) -> dict[str, list[int]]:
    """task id -> pids of the processes that started a run of it."""
    found: dict[str, list[int]] = {}
    for line in marker.read_text().splitlines():
        task_id, _attempt, pid = line.split()
        found.setdefault(task_id, []).append(int(pid))
    return found


async def test_three_replicas_start_together_on_an_empty_database(
    tmp_path: Path, pg_database: str
) -> None:
    marker = tmp_path / "runs.txt"
    with replicas(tmp_path, pg_database, 3) as procs:
        ids = []
        for proc in procs:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                stub = agents_pb2_grpc.AgentServiceStub(channel)
                ids += [(await submit(stub, 0.5, marker)).id for _ in range(3)]
        async with grpc.aio.insecure_channel(procs[0].target) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            async with asyncio.timeout(60):
                while any(t.state != S.TASK_STATE_SUCCEEDED for t in await states(stub, ids)):
                    await asyncio.sleep(0.1)
    started = runs(marker)
    assert sorted(started) == sorted(ids)
    assert all(len(pids) == 1 for pids in started.values())  # each ran once
    assert len({pid for pids in started.values() for pid in pids}) == 3  # on every replica


@pytest.mark.parametrize("fault", ["freeze", "kill"])
async def test_work_of_a_replica_that_stops_is_taken_over_in_seconds(
    tmp_path: Path, pg_database: str, fault: str
) -> None:
    marker = tmp_path / "runs.txt"
    with replicas(tmp_path, pg_database, 2) as (victim, survivor):
        async with (
            grpc.aio.insecure_channel(victim.target) as ch_victim,
            grpc.aio.insecure_channel(survivor.target) as ch_survivor,
        ):
            on_victim = agents_pb2_grpc.AgentServiceStub(ch_victim)
            on_survivor = agents_pb2_grpc.AgentServiceStub(ch_survivor)
            # One runs on the victim; with the survivor's slot busy, two wait in the pool.
            busy = await submit(on_survivor, 6.0, marker)
            running = await submit(on_victim, 8.0, marker)
            waiting = [await submit(on_victim, 0.2, marker) for _ in range(2)]
            async with asyncio.timeout(20):
                while (await states(on_survivor, [running.id]))[0].state != S.TASK_STATE_RUNNING:
                    await asyncio.sleep(0.05)
            stopped_at = time.monotonic()
            if fault == "freeze":  # alive but silent: only its heartbeat tells
                os.kill(victim.proc.pid, signal.SIGSTOP)
            else:
                victim.proc.kill()
            try:
                async with asyncio.timeout(45):
                    while runs(marker).get(running.id, []) == [victim.proc.pid]:
                        await asyncio.sleep(0.1)
                taken_over = time.monotonic() - stopped_at
                ids = [busy.id, running.id, *(w.id for w in waiting)]
                async with asyncio.timeout(90):
                    while any(
                        t.state not in (S.TASK_STATE_SUCCEEDED, S.TASK_STATE_FAILED)
                        for t in await states(on_survivor, ids)
                    ):
                        await asyncio.sleep(0.2)
            finally:
                victim.proc.kill()  # a frozen one too
            print(f"taken over after {taken_over:.1f} s ({fault})")
            # Bounded by stale_after (8 s) + check_interval (2 s), with slack
            # for a loaded machine.
            assert taken_over < 25
            events = events_pb2_grpc.EventServiceStub(ch_survivor)
            for task_id in ids:
                types = await _task_events(events, task_id)
                finals = [t for t in types if t in FINALS]
                final = (await states(on_survivor, [task_id]))[0]
                assert finals == ["task.succeeded"], (task_id == running.id, final, types)
    started = runs(marker)
    assert started[running.id][0] == victim.proc.pid
    assert started[running.id][1:] == [survivor.proc.pid]  # re-run once, by the survivor
    for w in waiting:  # pooled work ran exactly once
        assert len(started[w.id]) == 1
