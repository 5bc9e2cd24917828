"""Section "memory": sync throughput, incremental cost, Put latency.

1. Full sync: ``BENCH_MEMORY_FULL`` records (default 100,000) in one SQLite
   store, synced (bidirectionally, through :class:`SyncEngine`) into an empty
   one; baseline: a raw ``sqlite3`` row copy of the same table between the
   same kind of files in this run. Target: sync rate >= 0.3x the copy rate.
2. Incremental sync: 1,000 changed records on a store of
   ``BENCH_MEMORY_BIG`` records (default 1,000,000) against 1,000 on a
   10,000-record store; both stores of a pair start in sync with their
   checkpoints set; each side is the median of ``BENCH_MEMORY_REPS`` syncs
   (default 5), each of fresh changes spread over the store.
   Target: big/small time <= 2 (cost follows changes).
3. Put p99 through gRPC against ExecuteTask(echo) p99 on the same full
   server (API key, rate limiter, tracing), closed loop, best of 2 rounds.
   Target: Put p99 <= 2x ExecuteTask p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.memory_ledger import SqlSyncLedger
from datamcp.adapters.sqlalchemy.memory_schema import COLUMNS
from datamcp.adapters.sqlalchemy.memory_store import SqlMemoryStore
from datamcp.core.memory.model import SyncMode, SyncRequest
from datamcp.core.memory.service import MemoryService
from datamcp.core.memory.sync import SyncEngine
from tests.bench.agents_load import run_execute_load
from tests.bench.common import BenchConfig, run_client, write_result
from tests.bench.foundation import Ratio
from tests.bench.full_server import full_server, new_api_key
from tests.bench.load import CALL_TIMEOUT, START_SLACK, LoadResult

NAME = "memory: sync throughput, incremental cost, Put latency"
RESULT_FILE = "memory.json"
FULL_TARGET = 0.3
INCREMENTAL_TARGET = 2.0
P99_TARGET = 2.0
CHANGES = 1000
SMALL = 10_000
CONCURRENCY = 16
ROUNDS = 2
REPS = 5
TENANT = "bench"


def _count(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text else default


def _rows(start: int, stop: int, seq0: int, origin: str = "src") -> list[tuple[Any, ...]]:
    value = json.dumps({"text": "some remembered context", "n": 0})
    return [
        (
            TENANT,
            f"bench/{i % 16}",
            f"key-{i:08}",
            value,
            "[]",
            "{}",
            1.7e9,
            1.7e9,
            None,
            (1_700_000_000_000 << 16) + i,
            origin,
            json.dumps({origin: (1_700_000_000_000 << 16) + i}),
            0,
            None,
            None,
            origin,
            seq0 + i - start + 1,
        )
        for i in range(start, stop)
    ]


def _fill(path: Path, count: int, origin: str = "src") -> None:
    """Rows written straight into the store schema with sqlite3 executemany."""
    marks = ", ".join("?" * 17)
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            step = 50_000
            for start in range(0, count, step):
                stop = min(count, start + step)
                db.executemany(
                    f"INSERT INTO memory_records ({COLUMNS}) VALUES ({marks})",
                    _rows(start, stop, start, origin),
                )
            db.execute("UPDATE memory_meta SET num = ? WHERE name = 'seq'", (count,))
        # Everything into the main file: a copy of the file alone (no -wal)
        # must hold every row (it did not, and the 10,000-record pair then
        # synced into an empty store).
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


async def _store(path: Path, store_id: str, primary: bool = False) -> SqlMemoryStore:
    store = SqlMemoryStore(store_id, create_engine(f"sqlite:///{path}"), primary=primary)
    await store.open()
    return store


async def _engine(tmp: Path, stores: list[SqlMemoryStore]) -> tuple[MemoryService, SyncEngine]:
    app = create_engine(f"sqlite:///{tmp / 'app.db'}")
    await migrate.upgrade(app)
    service = MemoryService(stores, history_depth=10)
    await service.start()
    return service, SyncEngine(service, SqlSyncLedger(app))


def _raw_copy(source: Path, target: Path) -> float:
    began = time.perf_counter()
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        dst.execute("PRAGMA journal_mode=WAL")
        dst.execute("PRAGMA synchronous=NORMAL")
        cursor = src.execute(f"SELECT {COLUMNS} FROM memory_records ORDER BY seq")
        marks = ", ".join("?" * 17)
        while batch := cursor.fetchmany(5000):
            dst.executemany(f"INSERT INTO memory_records ({COLUMNS}) VALUES ({marks})", batch)
    return time.perf_counter() - began


async def full_sync(tmp: Path, count: int) -> dict[str, Any]:
    a = await _store(tmp / "full-a.db", "a", primary=True)
    b = await _store(tmp / "full-b.db", "b")
    copy_target = await _store(tmp / "full-copy.db", "copy")
    await copy_target.close()
    await a.close()
    _fill(tmp / "full-a.db", count, "a")
    copy_seconds = _raw_copy(tmp / "full-a.db", tmp / "full-copy.db")
    a = await _store(tmp / "full-a.db", "a", primary=True)
    service, engine = await _engine(tmp, [a, b])
    try:
        began = time.perf_counter()
        run = await engine.synchronize(TENANT, SyncRequest(mode=SyncMode.FULL))
        sync_seconds = time.perf_counter() - began
        assert run.status.name == "SUCCEEDED", run.error
        assert run.records_synced == count, run
        _, copied = await b.stats(TENANT)
        assert copied == count
    finally:
        await service.stop()
        for s in (a, b):
            await s.close()
    return {
        "records": count,
        "raw_copy_seconds": round(copy_seconds, 3),
        "sync_seconds": round(sync_seconds, 3),
        "ratio": round(copy_seconds / sync_seconds, 3),
    }


async def incremental(tmp: Path, size: int, reps: int) -> list[float]:
    """Seconds to sync CHANGES changed records between two in-sync stores of
    ``size``, once per rep, each rep with fresh changes spread over the store."""
    left, right = tmp / f"inc-{size}-a.db", tmp / f"inc-{size}-b.db"
    a = await _store(left, "a", primary=True)
    await a.close()
    _fill(left, size, "a")
    shutil.copyfile(left, right)
    with contextlib.closing(sqlite3.connect(right)) as db, db:
        db.execute("UPDATE memory_meta SET label = 'b' WHERE name = 'store'")
    a = await _store(left, "a", primary=True)
    b = await _store(right, "b")
    for s in (a, b):
        assert (await s.stats(TENANT))[1] == size, f"store {s.id} not filled"
        for rep in (f"{TENANT}||a->b", f"{TENANT}||b->a"):
            await s.set_checkpoint(rep, size)
    (tmp / f"inc-{size}").mkdir(exist_ok=True)
    service, engine = await _engine(tmp / f"inc-{size}", [a, b])
    times: list[float] = []
    try:
        step = size // CHANGES
        for rep in range(reps):
            # Keys rep, rep + step, ...: spread over the whole store, new each rep.
            ops = [
                service.op(f"bench/{i % 16}", f"key-{i:08}", {"text": "changed", "n": i})
                for i in range(rep % step, size, step)
            ][:CHANGES]
            for start in range(0, len(ops), 500):
                await service.write(TENANT, ops[start : start + 500], "a")
            began = time.perf_counter()
            run = await engine.synchronize(TENANT, SyncRequest())
            times.append(time.perf_counter() - began)
            assert run.status.name == "SUCCEEDED", run.error
            assert run.records_synced == CHANGES, run
    finally:
        await service.stop()
        for s in (a, b):
            await s.close()
    return times


def run_put_load(target: str, config: BenchConfig, api_key: str) -> LoadResult:
    args = [
        f"--target={target}",
        f"--seconds={config.seconds}",
        f"--warmup={config.warmup}",
        f"--concurrency={CONCURRENCY}",
    ]
    timeout = config.warmup + config.seconds + CALL_TIMEOUT + START_SLACK
    line = run_client("tests.bench.memory_load", args, timeout=timeout, api_key=api_key)
    return LoadResult.from_json(line)


def put_latency(tmp: Path, config: BenchConfig) -> dict[str, Any]:
    api_key = new_api_key()
    runs: dict[str, list[LoadResult]] = {"execute": [], "put": []}
    with full_server(tmp / "server", api_key) as server:
        target = f"127.0.0.1:{server.port}"
        for _ in range(ROUNDS):
            runs["execute"].append(
                run_execute_load(
                    target,
                    seconds=config.seconds,
                    warmup=config.warmup,
                    concurrency=CONCURRENCY,
                    channels=1,
                    api_key=api_key,
                )
            )
            runs["put"].append(run_put_load(target, config, api_key))
    best = {k: min(v, key=lambda r: r.p99_ms) for k, v in runs.items()}
    valid = all(r.calls and not r.errors for v in runs.values() for r in v)
    return {
        "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "best": {k: asdict(r) for k, r in best.items()},
        "ratio": Ratio(
            best["put"].p99_ms / best["execute"].p99_ms if best["execute"].p99_ms else 0.0,
            P99_TARGET,
            False,
            valid,
        ),
    }


def run(config: BenchConfig) -> Mapping[str, Any]:
    full_n = _count("BENCH_MEMORY_FULL", 100_000)
    big = _count("BENCH_MEMORY_BIG", 1_000_000)
    reps = max(1, _count("BENCH_MEMORY_REPS", REPS))
    print(
        f"  full sync of {full_n:,} records (SQLite -> SQLite) vs raw sqlite3 copy\n"
        f"  incremental sync of {CHANGES:,} changes: {big:,}-record store vs {SMALL:,}\n"
        f"  Put vs ExecuteTask(echo) p99, {CONCURRENCY} callers, best of {ROUNDS}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-memory-") as name:
        tmp = Path(name)
        full = asyncio.run(full_sync(tmp, full_n))
        full_ratio = Ratio(full["ratio"], FULL_TARGET, True)
        print(
            f"  full sync: raw copy {full['raw_copy_seconds']:.2f} s, sync "
            f"{full['sync_seconds']:.2f} s -> copy/sync {full_ratio.describe()}",
            flush=True,
        )
        small_runs = asyncio.run(incremental(tmp, SMALL, reps))
        big_runs = asyncio.run(incremental(tmp, big, reps))
        small_s, big_s = statistics.median(small_runs), statistics.median(big_runs)
        inc_ratio = Ratio(big_s / small_s, INCREMENTAL_TARGET, False)
        print(
            f"  incremental: {SMALL:,} store {small_s * 1000:.0f} ms, {big:,} store "
            f"{big_s * 1000:.0f} ms (medians of {reps}) -> big/small {inc_ratio.describe()}",
            flush=True,
        )
        latency = put_latency(tmp, config)
    p99 = latency["ratio"]
    best = latency["best"]
    print(
        f"  Put p99 {best['put']['p99_ms']:.2f} ms ({best['put']['qps']:.0f}/s), ExecuteTask p99 "
        f"{best['execute']['p99_ms']:.2f} ms ({best['execute']['qps']:.0f}/s) -> "
        f"put/execute {p99.describe()}",
        flush=True,
    )
    data: dict[str, Any] = {
        "section": NAME,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "full_sync": full,
        "incremental": {
            "changes": CHANGES,
            "small": SMALL,
            "big": big,
            "reps": reps,
            "small_s": small_s,
            "big_s": big_s,
            "small_runs_s": [round(x, 4) for x in small_runs],
            "big_runs_s": [round(x, 4) for x in big_runs],
        },
        "put_latency": {k: v for k, v in latency.items() if k != "ratio"},
        "targets": {
            "full_sync_over_raw_copy": full_ratio.to_dict(),
            "incremental_big_over_small": inc_ratio.to_dict(),
            "put_p99_over_execute_p99": p99.to_dict(),
        },
    }
    path = write_result(config, RESULT_FILE, data)
    print(f"  results written to {path}", flush=True)
    return data
