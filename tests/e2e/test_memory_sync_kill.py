"""SIGKILL a real server in the middle of a large sync, restart it, sync again:
the stores converge, nothing is duplicated, nothing is lost, and the run the
dead process owned is reported INTERRUPTED."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc

from datamcp.entrypoints.grpc.values import from_value, to_value
from datamcp.v1 import memory_pb2 as pb
from datamcp.v1 import memory_pb2_grpc
from tests.support import server_process

RECORDS = 40_000
BATCH = 1000


def config(tmp_path: Path) -> Path:
    path = tmp_path / "datamcp.toml"
    path.write_text(
        f"""
[rate_limit]
enabled = false

[[memory.stores]]
id = "main"
url = "sqlite:///{tmp_path / "data" / "datamcp.db"}"
primary = true

[[memory.stores]]
id = "edge"
url = "sqlite:///{tmp_path / "edge.db"}"
""",
        encoding="utf-8",
    )
    return path


def serve_args(tmp_path: Path) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--config",
        str(config(tmp_path)),
    ]


async def fill(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        m = memory_pb2_grpc.MemorySyncServiceStub(channel)
        for start in range(0, RECORDS, BATCH):
            entries = [
                pb.PutEntry(namespace=f"bulk/{i % 7}", key=f"k{i:06}", value=to_value({"i": i}))
                for i in range(start, start + BATCH)
            ]
            await m.BatchPut(pb.BatchPutRequest(entries=entries, store="edge"), timeout=60)
        # Some records on the primary too, so both directions have work.
        await m.BatchPut(
            pb.BatchPutRequest(
                entries=[
                    pb.PutEntry(namespace="main", key=f"m{i}", value=to_value(i))
                    for i in range(500)
                ]
            ),
            timeout=60,
        )


async def start_and_wait_for_progress(target: str) -> tuple[str, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        m = memory_pb2_grpc.MemorySyncServiceStub(channel)
        run = (await m.Synchronize(pb.SynchronizeRequest(background=True), timeout=10)).run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = (await m.GetSyncRun(pb.GetSyncRunRequest(sync_id=run.sync_id))).run
            if got.records_synced >= 5000:
                return run.sync_id, got.records_synced
            assert got.status == pb.SYNC_RUN_STATUS_RUNNING, got
            await asyncio.sleep(0.005)
    raise AssertionError("the sync made no progress")


async def finish(target: str, killed_run: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        m = memory_pb2_grpc.MemorySyncServiceStub(channel)
        dead = (await m.GetSyncRun(pb.GetSyncRunRequest(sync_id=killed_run))).run
        assert dead.status == pb.SYNC_RUN_STATUS_INTERRUPTED, dead
        resumed = (await m.Synchronize(pb.SynchronizeRequest(), timeout=120)).run
        assert resumed.status == pb.SYNC_RUN_STATUS_SUCCEEDED, resumed.error
        # Resumed from the checkpoints: the pages committed before the kill are not redone.
        assert resumed.records_synced < RECORDS + 500
        again = (await m.Synchronize(pb.SynchronizeRequest(), timeout=60)).run
        assert again.records_synced == 0 and again.conflicts_detected == 0
        stores = {s.id: s for s in (await m.ListStores(pb.ListStoresRequest())).stores}
        assert stores["main"].records == stores["edge"].records == RECORDS + 500
        for store in ("main", "edge"):
            keys: list[str] = []
            token = ""
            while True:
                page = await m.List(
                    pb.ListRequest(page_size=1000, page_token=token, store=store), timeout=30
                )
                keys += [f"{r.namespace}/{r.key}" for r in page.records]
                token = page.next_page_token
                if not token:
                    break
            assert len(keys) == len(set(keys)) == RECORDS + 500
        for i in (0, 12_345, RECORDS - 1):
            got = await m.Get(
                pb.GetRequest(namespace=f"bulk/{i % 7}", key=f"k{i:06}", store="main")
            )
            assert from_value(got.record.value) == {"i": i}


def test_sigkill_during_a_large_sync_then_resume(tmp_path: Path) -> None:
    args = serve_args(tmp_path)
    with server_process(*args) as server:
        asyncio.run(fill(server.target))
        run_id, progress = asyncio.run(start_and_wait_for_progress(server.target))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    assert progress < RECORDS + 500
    with server_process(*args) as server:
        asyncio.run(finish(server.target, run_id))
        assert server.stop() == 0
