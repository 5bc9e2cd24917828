"""The Node remote agent (examples/node-agent) against the real server: it
registers over AgentService.Connect, is listed and routed tasks like any
agent, honours cancellation, and its tasks survive (or fail, by policy) when
its process dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from datamcp.v1 import agents_pb2, agents_pb2_grpc
from tests.support import (
    API_KEY,
    apikey,
    auth_overrides,
    clean_env,
    make_settings,
    rich_details,
    running_server,
)

AGENT_DIR = Path(__file__).resolve().parents[2] / "examples" / "node-agent"
NODE = shutil.which("node")
NPM = shutil.which("npm")
CAPABILITIES = {"text.reverse", "text.stats", "text.slow"}
AUTH = apikey()

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="node and npm are needed")


@pytest.fixture(scope="session")
def agent_script() -> Path:
    """agent.js with its dependencies installed (``npm ci`` once when missing)."""
    needed = [
        AGENT_DIR / "node_modules" / "@grpc" / p / "package.json"
        for p in ("grpc-js", "proto-loader")
    ]
    if not all(p.is_file() for p in needed):
        assert NPM is not None
        try:
            subprocess.run(
                [NPM, "ci", "--no-audit", "--no-fund"],
                cwd=AGENT_DIR,
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"npm ci failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}")
    return AGENT_DIR / "agent.js"


# --- the node process -----------------------------------------------------------


class NodeAgent:
    """One ``node agent.js`` process: its READY agent ids and JSON log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ready_ids: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._ready = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @property
    def agent_id(self) -> str:
        return self.ready_ids[0]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY "):
                self.ready_ids.append(line.split(" ", 1)[1])
                self._ready.set()
        self._ready.set()  # EOF: the process is gone

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    async def wait_ready(self, timeout: float) -> str:
        await asyncio.wait_for(self._ready.wait(), timeout)
        if not self.ready_ids:
            await asyncio.wait_for(self.proc.wait(), 5)
            raise AssertionError(f"agent exited ({self.proc.returncode}) before READY: {self.raw}")
        return self.agent_id

    def seen(self, event: str, task_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and (task_id is None or e.get("task_id") == task_id)
        ]

    async def wait_event(self, event: str, task_id: str | None = None, timeout: float = 10) -> Any:
        async def poll() -> dict[str, Any]:
            while not (found := self.seen(event, task_id)):
                await asyncio.sleep(0.02)
            return found[0]

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {event!r} for {task_id} in agent logs: {self.raw}") from None

    async def terminate(self, timeout: float = 10) -> int:
        """SIGTERM, then the exit code (killed when it does not leave in time)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"agent ignored SIGTERM: {self.raw}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10)

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.kill()
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)
            reader.cancel()


@contextlib.asynccontextmanager
async def node_agent(
    script: Path,
    target: str,
    *,
    name: str = "node-text",
    api_key: str = API_KEY,
    ready: bool = True,
    timeout: float = 20,
) -> AsyncIterator[NodeAgent]:
    """Start ``node agent.js`` against ``target``; wait for READY unless told not to.
    The process is always killed and reaped on the way out."""
    assert NODE is not None
    env = clean_env(
        {
            "DATAMCP_TARGET": target,
            "DATAMCP_API_KEY": api_key,
            "DATAMCP_AGENT_NAME": name,
            "DATAMCP_AGENT_VERBOSE": "1",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(script),
        cwd=str(script.parent),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    agent = NodeAgent(proc)
    try:
        if ready:
            await agent.wait_ready(timeout)
        yield agent
    finally:
        await agent.close()


# --- helpers ---------------------------------------------------------------------


def value(obj: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(obj, out)
    return out


def plain(message: Any) -> Any:
    return json_format.MessageToDict(message)


def spec(capability: str, payload: Any, timeout: float = 60) -> agents_pb2.TaskSpec:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(int(timeout * 1000))
    return agents_pb2.TaskSpec(capability=capability, input=value(payload), timeout=duration)


async def wait_task(
    stub: agents_pb2_grpc.AgentServiceStub,
    task_id: str,
    predicate: Callable[[agents_pb2.Task], bool],
    timeout: float = 15,
) -> agents_pb2.Task:
    last: list[agents_pb2.Task] = []

    async def poll() -> agents_pb2.Task:
        while True:
            reply = await stub.GetTask(agents_pb2.GetTaskRequest(id=task_id), metadata=AUTH)
            last[:] = [reply.task]
            if predicate(reply.task):
                return reply.task
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"task never got there; last seen: {last}") from None


async def agents_by_id(stub: agents_pb2_grpc.AgentServiceStub) -> dict[str, agents_pb2.Agent]:
    reply = await stub.ListAgents(agents_pb2.ListAgentsRequest(), metadata=AUTH)
    return {a.id: a for a in reply.agents}


def state(task: agents_pb2.Task) -> str:
    return agents_pb2.TaskState.Name(task.state)


def settings_for(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Any:
    return make_settings(
        tmp_path,
        database_url,
        **auth_overrides(),
        **{"agents.heartbeat_interval": 0.5, **overrides},
    )


# --- tests -----------------------------------------------------------------------


async def test_node_agent_is_listed_and_runs_tasks(
    tmp_path: Path, database_url: str, agent_script: Path
) -> None:
    async with running_server(settings_for(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        async with node_agent(agent_script, srv.target) as node:
            agents = await agents_by_id(stub)
            assert node.agent_id in agents, agents.keys()
            agent = agents[node.agent_id]
            assert agent.kind == "remote" and agent.name == "node-text"
            assert agent.status == agents_pb2.AGENT_STATUS_READY
            assert agent.max_concurrency == 4
            caps = {c.name: c for c in agent.capabilities}
            assert set(caps) == CAPABILITIES
            schema = plain(caps["text.reverse"].input_schema)
            assert schema["required"] == ["text"]
            assert schema["properties"]["text"]["type"] == "string"
            by_cap = await stub.ListAgents(
                agents_pb2.ListAgentsRequest(capability="text.stats"), metadata=AUTH
            )
            assert node.agent_id in {a.id for a in by_cap.agents}
            got = await stub.GetAgent(agents_pb2.GetAgentRequest(id=node.agent_id), metadata=AUTH)
            assert got.agent.kind == "remote"

            text = "héllo, wörld 🙂"
            reply = await stub.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(task=spec("text.reverse", {"text": text})),
                metadata=AUTH,
                timeout=30,
            )
            task = reply.task
            assert state(task) == "TASK_STATE_SUCCEEDED", task
            assert plain(task.result) == {"text": text[::-1]}
            assert task.agent_id == node.agent_id and task.attempts == 1

            text = "one two  three\nfour\n\nfive"
            reply = await stub.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(task=spec("text.stats", {"text": text})),
                metadata=AUTH,
                timeout=30,
            )
            assert state(reply.task) == "TASK_STATE_SUCCEEDED", reply.task
            expected = {
                "chars": len(text),
                "words": len(text.split()),
                "lines": len(text.splitlines()),
            }
            assert plain(reply.task.result) == expected
            assignments = node.seen("assignment")
            assert [e["capability"] for e in assignments] == ["text.reverse", "text.stats"]
            assert len(node.seen("result")) == 2

            for bad in ({"text": 42}, {}, {"text": "x", "extra": True}):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ExecuteTask(
                        agents_pb2.ExecuteTaskRequest(task=spec("text.reverse", bad)),
                        metadata=AUTH,
                        timeout=30,
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
                violations = rich_details(err.value)["BadRequest"].field_violations
                assert any(v.field.startswith("task.input") for v in violations), violations
            assert len(node.seen("assignment")) == 2  # rejected tasks never reached it
            await node.wait_event("heartbeat", timeout=5)  # every 0.25 s (interval 0.5 s)

            assert await node.terminate() == 0
            assert node.seen("shutdown") and node.seen("exit")[0]["code"] == 0

            async def gone() -> None:
                while True:
                    left = (await agents_by_id(stub)).get(node.agent_id)
                    if left is None or left.status == agents_pb2.AGENT_STATUS_DISCONNECTED:
                        return
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(gone(), 10)


async def test_cancel_reaches_the_node_agent(tmp_path: Path, agent_script: Path) -> None:
    async with running_server(settings_for(tmp_path)) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        async with node_agent(agent_script, srv.target) as node:
            submitted = await stub.SubmitTask(
                agents_pb2.SubmitTaskRequest(task=spec("text.slow", {"seconds": 30})),
                metadata=AUTH,
            )
            task_id = submitted.task.id
            running = await wait_task(
                stub,
                task_id,
                lambda t: t.state == agents_pb2.TASK_STATE_RUNNING and t.progress.percent > 0,
            )
            assert running.agent_id == node.agent_id
            assert "slept" in running.progress.message

            reply = await stub.CancelTask(agents_pb2.CancelTaskRequest(id=task_id), metadata=AUTH)
            if reply.task.state != agents_pb2.TASK_STATE_CANCELLED:
                await wait_task(stub, task_id, lambda t: t.state == agents_pb2.TASK_STATE_CANCELLED)
            await node.wait_event("cancel", task_id)
            await node.wait_event("task_stopped", task_id)

            await asyncio.sleep(0.5)  # several progress ticks, were it still running
            mine = [e for e in node.events if e.get("task_id") == task_id]
            after = mine[mine.index(node.seen("cancel", task_id)[0]) + 1 :]
            assert [e["event"] for e in after] == ["task_stopped"], after
            assert not node.seen("result", task_id)
            final = await stub.GetTask(agents_pb2.GetTaskRequest(id=task_id), metadata=AUTH)
            assert state(final.task) == "TASK_STATE_CANCELLED", final.task

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CancelTask(agents_pb2.CancelTaskRequest(id=task_id), metadata=AUTH)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            # The slot is free again: the agent still takes work.
            reply = await stub.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(task=spec("text.reverse", {"text": "abc"})),
                metadata=AUTH,
                timeout=30,
            )
            assert plain(reply.task.result) == {"text": "cba"}


async def test_killed_agent_task_is_requeued_to_another_agent(
    tmp_path: Path, database_url: str, agent_script: Path
) -> None:
    async with running_server(settings_for(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        async with node_agent(agent_script, srv.target, name="node-a") as first:
            submitted = await stub.SubmitTask(
                agents_pb2.SubmitTaskRequest(task=spec("text.slow", {"seconds": 1.5})),
                metadata=AUTH,
            )
            task_id = submitted.task.id
            await wait_task(
                stub,
                task_id,
                lambda t: t.state == agents_pb2.TASK_STATE_RUNNING and t.progress.percent > 0,
            )
            await first.wait_event("assignment", task_id)
            await first.kill()
            queued = await wait_task(
                stub, task_id, lambda t: t.state != agents_pb2.TASK_STATE_RUNNING
            )
            assert state(queued) == "TASK_STATE_QUEUED", queued
            assert not first.seen("result", task_id)

            async with node_agent(agent_script, srv.target, name="node-b") as second:
                assert second.agent_id != first.agent_id
                done = await wait_task(
                    stub, task_id, lambda t: t.state >= agents_pb2.TASK_STATE_SUCCEEDED, 20
                )
                assert state(done) == "TASK_STATE_SUCCEEDED", done
                assert done.agent_id == second.agent_id
                assert plain(done.result) == {"slept": 1.5}
                assert done.attempts == 2
                (assignment,) = second.seen("assignment", task_id)
                assert assignment["attempt"] == 2
                assert second.seen("result", task_id)


async def test_killed_agent_task_fails_when_configured(tmp_path: Path, agent_script: Path) -> None:
    settings = settings_for(tmp_path, **{"agents.remote_disconnect": "fail"})
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = agents_pb2_grpc.AgentServiceStub(ch)
        async with node_agent(agent_script, srv.target) as node:
            submitted = await stub.SubmitTask(
                agents_pb2.SubmitTaskRequest(task=spec("text.slow", {"seconds": 30})),
                metadata=AUTH,
            )
            task_id = submitted.task.id
            await wait_task(stub, task_id, lambda t: t.state == agents_pb2.TASK_STATE_RUNNING)
            await node.wait_event("assignment", task_id)
            await node.kill()
            failed = await wait_task(
                stub, task_id, lambda t: t.state >= agents_pb2.TASK_STATE_SUCCEEDED, 10
            )
            assert state(failed) == "TASK_STATE_FAILED", failed
            assert "DISCONNECT" in failed.error.reason, failed.error
            assert failed.attempts == 1


async def test_node_agent_with_a_wrong_key_gives_up(tmp_path: Path, agent_script: Path) -> None:
    async with running_server(settings_for(tmp_path)) as srv:
        async with node_agent(
            agent_script, srv.target, api_key="not-a-valid-key-000000000", ready=False
        ) as node:
            code = await asyncio.wait_for(node.proc.wait(), 15)
            assert code == 2, node.raw
            assert not node.ready_ids
            (fatal,) = node.seen("fatal")
            assert fatal["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
