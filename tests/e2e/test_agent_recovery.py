"""SIGKILL of the server mid-task: after a restart every task reaches its
correct final state (re-run or failed by ``agents.recovery``) and nothing
that was committed is lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from grpc import aio

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import agents_pb2 as pb
from datamcp.v1 import agents_pb2_grpc
from tests.agent_plugins import PLUGINS
from tests.support import server_process

S = pb.TaskState


async def _state(stub: agents_pb2_grpc.AgentServiceStub, task_id: str, states: set[int]) -> pb.Task:
    async with asyncio.timeout(20):
        while True:
            task = (await stub.GetTask(pb.GetTaskRequest(id=task_id), timeout=5)).task
            if task.state in states:
                return task
            await asyncio.sleep(0.05)


async def _submit(
    stub: agents_pb2_grpc.AgentServiceStub, capability: str, payload: object
) -> pb.Task:
    s = pb.TaskSpec(capability=capability, input=to_value(payload))
    return (await stub.SubmitTask(pb.SubmitTaskRequest(task=s), timeout=5)).task


@pytest.mark.parametrize("policy", ["retry", "fail"])
async def test_sigkill_mid_task(tmp_path: Path, policy: str) -> None:
    env = {"DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS), "DATAMCP_AGENTS_RECOVERY": policy}
    marker = tmp_path / "runs.txt"
    args = ("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    with server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            done = await _submit(stub, "echo", {"kept": True})
            await _state(stub, done.id, {S.TASK_STATE_SUCCEEDED})
            running = await _submit(stub, "test.slow", {"seconds": 2, "marker": str(marker)})
            queued = await _submit(stub, "test.slow", {"seconds": 0.1, "marker": str(marker)})
            await _state(stub, running.id, {S.TASK_STATE_RUNNING})
            assert queued.state == S.TASK_STATE_QUEUED
            server.proc.kill()
            assert server.proc.wait(10) == -9

    with server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            kept = (await stub.GetTask(pb.GetTaskRequest(id=done.id))).task
            assert kept.state == S.TASK_STATE_SUCCEEDED
            assert from_value(kept.result) == {"kept": True}
            final = await _state(stub, running.id, {S.TASK_STATE_SUCCEEDED, S.TASK_STATE_FAILED})
            after = await _state(stub, queued.id, {S.TASK_STATE_SUCCEEDED})
            assert after.attempts == 1
        assert server.stop() == 0
    runs = [line.split()[0] for line in marker.read_text().splitlines()]
    if policy == "retry":
        assert final.state == S.TASK_STATE_SUCCEEDED and final.attempts == 2
        assert runs.count(running.id) == 2
    else:
        assert final.state == S.TASK_STATE_FAILED
        assert final.error.reason == "PROCESS_DIED"
        assert runs.count(running.id) == 1
    assert runs.count(queued.id) == 1
