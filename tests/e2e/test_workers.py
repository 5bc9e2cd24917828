"""``datamcp serve --workers N``: N replicas on one port over PostgreSQL; a
crashed worker comes back; SIGTERM stops them all; SQLite is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from datamcp.v1 import agents_pb2, agents_pb2_grpc
from tests.integration.test_agents import spec
from tests.support import clean_env, datamcp_command, server_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_pids(lines: list[dict[str, object]]) -> set[int]:
    return {int(str(e["pid"])) for e in lines if e.get("message") == "datamcp serving"}


async def wait_for(predicate: object, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def owners(pg_database: str) -> set[str]:
    dsn = make_url(pg_database).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    try:
        return {r["owner"] for r in await conn.fetch("SELECT DISTINCT owner FROM tasks")}
    finally:
        await conn.close()


def test_more_than_one_worker_needs_postgresql(tmp_path: Path) -> None:
    proc = subprocess.run(
        datamcp_command(
            "serve", "--workers", "2", "--listen", f"127.0.0.1:{free_port()}",
            "--data-dir", str(tmp_path),
        ),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "server.workers" in proc.stderr and "PostgreSQL" in proc.stderr


@pytest.mark.pg
async def test_workers_share_the_port_come_back_after_a_crash_and_stop_together(
    tmp_path: Path, pg_database: str
) -> None:
    port = free_port()
    args = (
        "--workers", "2", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
        "--database-url", pg_database,
    )  # fmt: skip
    with server_process(*args, env={"DATAMCP_LOGGING_FORMAT": "json"}) as sup:
        await wait_for(lambda: len(serving_pids(sup.lines)) == 2)
        first = serving_pids(sup.lines)
        assert sup.proc.pid not in first
        # New connections land on both workers: tasks end up owned by two instances.
        for _ in range(40):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = agents_pb2_grpc.AgentServiceStub(channel)
                done = await stub.ExecuteTask(
                    agents_pb2.ExecuteTaskRequest(task=spec("echo", 1)), timeout=10
                )
                assert done.task.state == agents_pb2.TASK_STATE_SUCCEEDED
        assert len(await owners(pg_database)) == 2
        # A worker killed outright is started again.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(serving_pids(sup.lines) - first) == 1)
        # SIGTERM stops them all, gracefully.
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(40) == 0
        for pid in serving_pids(sup.lines) - {victim}:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
