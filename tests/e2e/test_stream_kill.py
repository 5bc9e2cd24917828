"""SIGKILL of the server while a stream job is consuming and clients are
pushing: after a restart every window result is counted exactly once.

The client keeps pushing through the kill; messages carry request ids, so
after the restart it simply resends everything (what was stored before the
kill is not stored again) and the job resumes from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from datamcp.entrypoints.grpc.values import to_struct
from datamcp.v1 import streams_pb2 as pb
from tests import support
from tests.streams_client import Streams, job_spec

MESSAGES = 600
PER_MESSAGE = 5
KEYS = ("a", "b", "c")


def _record(n: int) -> dict[str, Any]:
    return {"k": KEYS[n % 3], "t": (n * 7) % 100, "v": n % 11}


def _messages(job_id: str) -> list[pb.PushRecordsRequest]:
    return [
        pb.PushRecordsRequest(
            job_id=job_id,
            request_id=f"m-{m}",
            records=[to_struct(_record(m * PER_MESSAGE + i)) for i in range(PER_MESSAGE)],
        )
        for m in range(MESSAGES)
    ]


async def _push_all(streams: Streams, job_id: str) -> None:
    """Push every message, 20 per call, in order."""
    messages = _messages(job_id)
    for start in range(0, len(messages), 20):
        chunk = messages[start : start + 20]

        async def requests(c: list[pb.PushRecordsRequest] = chunk) -> AsyncIterator[Any]:
            for m in c:
                yield m

        await streams.stub.PushRecords(requests(), timeout=10)


def _expected() -> dict[tuple[str, float], dict[str, Any]]:
    windows: dict[tuple[str, float], list[int]] = defaultdict(list)
    for n in range(MESSAGES * PER_MESSAGE):
        r = _record(n)
        windows[(r["k"], r["t"] - r["t"] % 10)].append(r["v"])
    return {
        key: {
            "count": len(vs),
            "sum_v": sum(vs),
            "avg_v": sum(vs) / len(vs),
            "min_v": min(vs),
            "max_v": max(vs),
        }
        for key, vs in windows.items()
    }


async def test_sigkill_mid_stream_counts_every_window_once(tmp_path: Path) -> None:
    env = {
        "DATAMCP_STREAMS_LEASE": "2",
        "DATAMCP_STREAMS_POLL_INTERVAL": "0.05",
        "DATAMCP_STREAMS_BATCH": "2",
        "DATAMCP_RATE_LIMIT_ENABLED": "false",
    }
    data = tmp_path / "data"
    args = ("--listen", "127.0.0.1:0", "--data-dir", str(data))
    spec = job_spec(size=10, lateness=200, table="stream_totals")
    total_inputs = MESSAGES

    with support.server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            streams = Streams(channel)
            job = await streams.create(spec, name="kill-me")
            pusher = asyncio.create_task(_push_all(streams, job.id))
            seen = await streams.wait(job.id, timeout=30, checkpoints=5)
            server.proc.kill()
            assert server.proc.wait(10) == -9
            with pytest.raises(grpc.RpcError):
                await pusher
    # The kill landed mid-stream: input was left to consume.
    assert seen.counters.inputs_consumed < total_inputs

    with support.server_process(*args, env=env) as server:
        async with aio.insecure_channel(server.target) as channel:
            streams = Streams(channel)
            await _push_all(streams, job.id)  # resend everything: stored once
            closing = [to_struct({"k": "a", "t": 1000, "v": 0})]
            await streams.stub.PushRecords(
                iter([pb.PushRecordsRequest(job_id=job.id, records=closing)]), timeout=10
            )
            expected = _expected()
            done = await streams.wait(job.id, timeout=60, windows_emitted=len(expected))
            results = await streams.results(job.id)
        assert server.stop() == 0

    c = done.counters
    assert c.records_accepted == MESSAGES * PER_MESSAGE + 1
    assert (c.records_late, c.records_rejected, c.windows_emitted) == (0, 0, len(expected))
    got = {(r["key"]["k"], r["window_start"]): r["aggregates"] for r in results}
    assert len(results) == len(expected)  # no window emitted twice
    assert got == expected
    with sqlite3.connect(data / "datamcp.db") as db:
        rows = db.execute(
            "SELECT key, window_start, record_count, aggregates FROM stream_totals"
        ).fetchall()
    assert len(rows) == len(expected)
    assert sorted(r[2] for r in rows) == sorted(a["count"] for a in expected.values())
