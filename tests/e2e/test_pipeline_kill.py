"""SIGKILL of the server mid-run: after a restart the run is FAILED
(PROCESS_DIED) and a merge or replace destination holds exactly what it held
before the run: never half-written. A new run then loads everything."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from grpc import aio

from datamcp.v1 import pipelines_pb2 as pb
from datamcp.v1 import pipelines_pb2_grpc
from tests.support import server_process

ROWS = 400_000


def _table(db: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, v FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["merge", "replace"])
async def test_sigkill_mid_run_leaves_destination_whole(tmp_path: Path, mode: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    lines = "".join(f"{i},value-{i}\n" for i in range(ROWS))
    (files / "big.csv").write_text("id,v\n" + lines)
    out = tmp_path / "out.db"
    conn = sqlite3.connect(out)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(1, "old-1"), (-5, "old-neg")])
    conn.commit()
    conn.close()
    before = _table(out)
    env = {
        "DATAMCP_PIPELINES_DATA_ROOTS": json.dumps([str(files)]),
        "DATAMCP_PIPELINES_SQL_CONNECTIONS": json.dumps({"out": f"sqlite:///{out}"}),
        "DATAMCP_PIPELINES_PROGRESS_INTERVAL": "0.05",
    }
    spec = {
        "name": "load",
        "source": {"csv": {"path": "big.csv"}},
        "transforms": [
            {"cast": {"id": "integer"}},
            {"validate": {"regex": {"v": "value-[0-9]+"}, "unique": ["id"]}},
        ],
        "destination": {
            "table": {"connection": "out", "table": "items", "mode": mode, "keys": ["id"]}
        },
        "batch_size": 500,
    }
    args = ("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    with server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = pipelines_pb2_grpc.PipelineServiceStub(channel)
            await stub.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
            run = (await stub.RunPipeline(pb.RunPipelineRequest(id="load"))).run
            async with asyncio.timeout(60):
                async for msg in stub.WatchRun(pb.WatchRunRequest(id=run.id)):
                    assert msg.run.state != pb.RUN_STATE_SUCCEEDED, "the run ended before the kill"
                    if msg.run.rows_written > 2000:
                        break
            server.proc.kill()
            assert server.proc.wait(10) == -9
    # Nothing of the killed run is visible, whatever it had written.
    assert _table(out) == before
    with server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            stub = pipelines_pb2_grpc.PipelineServiceStub(channel)
            async with asyncio.timeout(30):
                while True:
                    got = (await stub.GetRun(pb.GetRunRequest(id=run.id))).run
                    if got.state != pb.RUN_STATE_RUNNING:
                        break
                    await asyncio.sleep(0.1)
            assert got.state == pb.RUN_STATE_FAILED
            assert got.error.reason == "PROCESS_DIED"
            again = (await stub.RunPipeline(pb.RunPipelineRequest(id="load"))).run
            final = again
            async with asyncio.timeout(90):
                async for msg in stub.WatchRun(pb.WatchRunRequest(id=again.id)):
                    final = msg.run
            assert final.state == pb.RUN_STATE_SUCCEEDED, final.error
            assert final.rows_written == ROWS
        assert server.stop() == 0
    rows = _table(out)
    expected = ROWS + (1 if mode == "merge" else 0)  # merge keeps the row with id -5
    assert len(rows) == expected
    assert dict(rows)[1] == "value-1"
