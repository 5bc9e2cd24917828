"""Section "pipelines": CSV -> cast + filter + derive -> SQLite table.

A generated CSV of ``BENCH_PIPELINE_ROWS`` rows (default 1,000,000) and 10
mixed columns (integers, floats, text, booleans, ISO dates) is loaded into a
fresh SQLite table by five contenders, each in its own subprocess, one after
the other on the same file in the same run:

- ``engine``: the pipeline engine in-process (``Engine.execute``);
- ``rpc``: the real server (in the child process, SQLite app database):
  CreatePipeline, RunPipeline and WatchRun until SUCCEEDED;
- ``pandas``: ``read_csv`` + the same filter/derive + ``to_sql``;
- ``script``: a hand-written ``csv`` + ``sqlite3.executemany`` loop doing
  the same casts, filter and derive in one transaction.

Job: cast amount to float, keep rows with ``amount > 50``, cast id/qty to
integer and price to float, derive ``total = qty * price`` (the script does
the same steps in the same order; pandas casts every column while parsing). Targets: engine and rpc
rows/s >= 1.0x pandas and >= 0.5x the script.

Memory: the engine runs again on a file 10x smaller; peak RSS (ru_maxrss of
the child) on the big file may be at most 1.2x that on the small one.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.procs import REPO_ROOT

NAME = "pipelines: CSV -> filter/derive/cast -> SQLite"
RESULT_FILE = "pipelines.json"
ROWS_ENV = "BENCH_PIPELINE_ROWS"
DEFAULT_ROWS = 1_000_000
CHILD_TIMEOUT = 300.0
COLUMNS = ["id", "name", "city", "amount", "qty", "price", "active", "day", "category", "note"]

SPEC: dict[str, Any] = {
    "source": {"csv": {"path": "input.csv"}},
    "transforms": [
        {"cast": {"amount": "float"}},
        {"filter": "amount > 50"},
        {"cast": {"id": "integer", "qty": "integer", "price": "float"}},
        {"derive": {"column": "total", "expr": "qty * price"}},
    ],
    "destination": {"table": {"connection": "out", "table": "sales", "mode": "append"}},
}


def rows_from_env(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    text = env.get(ROWS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_ROWS
    if not text.isdigit() or int(text) < 1000:
        raise ValueError(f"{ROWS_ENV} must be a whole number >= 1000, got {text!r}")
    return int(text)


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    cities = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Lima", "Quito"]
    cats = ["a", "b", "c", "d", "e"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(rows):
            w.writerow(
                [
                    i,
                    f"name{rnd.randrange(100000)}",
                    cities[i % len(cities)],
                    f"{rnd.random() * 100:.2f}",
                    rnd.randrange(1, 20),
                    f"{rnd.random() * 500:.2f}",
                    "true" if i % 3 else "false",
                    f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
                    cats[i % 5],
                    "lorem ipsum dolor",
                ]
            )


# ---- contenders (run in a child process) -----------------------------------------------


def _script(src: Path, db_path: Path) -> int:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(
        "CREATE TABLE sales (id INTEGER, name TEXT, city TEXT, amount REAL, qty INTEGER, "
        "price REAL, active TEXT, day TEXT, category TEXT, note TEXT, total REAL)"
    )
    sql = "INSERT INTO sales VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    written = 0
    db.execute("BEGIN")
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        batch: list[tuple[Any, ...]] = []
        for r in reader:
            amount = float(r[3])
            if amount > 50:
                qty, price = int(r[4]), float(r[5])
                batch.append(
                    (int(r[0]), r[1], r[2], amount, qty, price, r[6], r[7], r[8], r[9], qty * price)
                )
                if len(batch) >= 10_000:
                    db.executemany(sql, batch)
                    written += len(batch)
                    batch = []
        db.executemany(sql, batch)
        written += len(batch)
    db.execute("COMMIT")
    db.close()
    return written


def _pandas(src: Path, db_path: Path) -> int:
    import pandas as pd

    df = pd.read_csv(
        src,
        dtype={"id": "int64", "amount": "float64", "qty": "int64", "price": "float64"},
        keep_default_na=False,
    )
    df = df[df["amount"] > 50].copy()
    df["total"] = df["qty"] * df["price"]
    db = sqlite3.connect(db_path)
    df.to_sql("sales", db, index=False)
    db.commit()
    db.close()
    return len(df)


def _connectors(root: Path, db_path: Path) -> Any:
    from datamcp.adapters.pipelines import PipelineConnectors

    return PipelineConnectors(data_roots=[root], sql_connections={"out": f"sqlite:///{db_path}"})


async def _engine(src: Path, db_path: Path) -> int:
    from datamcp.core.pipelines.engine import Engine, Progress
    from datamcp.core.pipelines.ports import ReadContext
    from datamcp.core.pipelines.spec import parse_spec

    spec = parse_spec({**SPEC, "source": {"csv": {"path": src.name}}})
    engine = Engine(_connectors(src.parent, db_path), batch_size=10_000)

    async def progress(p: Progress) -> None:
        return None

    outcome = await engine.execute(spec, ReadContext("bench", {}), "bench-run", progress)
    return outcome.stages[-1].written


async def _rpc(src: Path, db_path: Path) -> tuple[int, float]:
    from grpc import aio

    from datamcp.bootstrap import App
    from datamcp.config.settings import load_settings
    from datamcp.entrypoints.grpc.server import MeshServer
    from datamcp.v1 import pipelines_pb2 as pb
    from datamcp.v1 import pipelines_pb2_grpc

    data_dir = Path(tempfile.mkdtemp(prefix="datamcp-bench-app-"))
    settings = load_settings(
        overrides={
            "listen": "127.0.0.1:0",
            "data_dir": str(data_dir),
            "rate_limit.enabled": False,
            "logging.level": "WARNING",
            "pipelines.data_roots": [str(src.parent)],
            "pipelines.sql_connections": {"out": f"sqlite:///{db_path}"},
        },
        environ={},
    )
    spec_text = json.dumps({"name": "bench", **SPEC, "source": {"csv": {"path": src.name}}})
    app = await App.create(settings)
    server = MeshServer(app)
    port = await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pipelines_pb2_grpc.PipelineServiceStub(channel)
            await stub.CreatePipeline(pb.CreatePipelineRequest(spec_text=spec_text))
            started = time.perf_counter()
            run = (await stub.RunPipeline(pb.RunPipelineRequest(id="bench"))).run
            final = run
            async for msg in stub.WatchRun(pb.WatchRunRequest(id=run.id)):
                final = msg.run
            if final.state != pb.RUN_STATE_SUCCEEDED:
                raise RuntimeError(f"run ended {final.state}: {final.error.message}")
            return int(final.rows_written), started
    finally:
        await server.stop(1.0)


def child(mode: str, src: Path, db_path: Path) -> None:
    """Run one contender; the clock covers the job only (imports, and the
    server start for ``rpc``, are outside it, the same for every contender)."""
    import pandas  # noqa: F401  (imported up front by every contender alike)

    import datamcp.adapters.pipelines
    import datamcp.bootstrap  # noqa: F401

    # Every contender's modules are imported up front (the clock starts
    # after); freeze them so the collector does not rescan them during the
    # job. The same for every contender.
    gc.freeze()
    started = time.perf_counter()
    if mode == "script":
        written = _script(src, db_path)
    elif mode == "pandas":
        written = _pandas(src, db_path)
    elif mode == "engine":
        written = asyncio.run(_engine(src, db_path))
    elif mode == "rpc":
        written, started = asyncio.run(_rpc(src, db_path))
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "written": written, "rss_mb": rss_mb}))


def _run_child(mode: str, src: Path, db_path: Path) -> dict[str, Any]:
    if db_path.exists():
        db_path.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.pipelines", mode, str(src), str(db_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    check = sqlite3.connect(db_path)
    try:
        count = check.execute("SELECT count(*), round(sum(total), 2) FROM sales").fetchone()
    finally:
        check.close()
    out["table_rows"], out["table_sum"] = count
    return out


def run(config: BenchConfig) -> Mapping[str, Any]:
    rows = rows_from_env()
    print(f"  {rows:,} rows x {len(COLUMNS)} columns; each contender in its own process")
    results: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-pipelines-") as tmp:
        root = Path(tmp)
        big, small = root / "input.csv", root / "small.csv"
        generate(big, rows)
        generate(small, rows // 10)
        for mode in ("script", "pandas", "engine", "rpc"):
            r = _run_child(mode, big, root / f"{mode}.db")
            r["rows_per_s"] = rows / r["seconds"]
            results[mode] = r
            print(
                f"  {mode:<7} {r['seconds']:7.2f} s  {r['rows_per_s']:>10,.0f} rows/s  "
                f"written {r['written']:,}  peak RSS {r['rss_mb']:.0f} MB",
                flush=True,
            )
        sums = {results[m]["table_sum"] for m in ("script", "pandas", "engine", "rpc")}
        counts = {results[m]["table_rows"] for m in ("script", "pandas", "engine", "rpc")}
        if len(counts) != 1 or len(sums) != 1:
            warn(f"contenders disagree on the result: rows {counts}, sums {sums}")
        small_run = _run_child("engine", small, root / "small.db")
        results["engine_small"] = small_run
    for mode in ("engine", "rpc"):
        vs_pandas = results[mode]["rows_per_s"] / results["pandas"]["rows_per_s"]
        vs_script = results[mode]["rows_per_s"] / results["script"]["rows_per_s"]
        results[f"{mode}_vs_pandas"] = vs_pandas
        results[f"{mode}_vs_script"] = vs_script
        verdict = "ok" if vs_pandas >= 1.0 and vs_script >= 0.5 else "BELOW TARGET"
        print(
            f"  {mode}: {vs_pandas:.2f}x pandas (target >= 1.0), "
            f"{vs_script:.2f}x script (target >= 0.5): {verdict}"
        )
        if verdict != "ok":
            warn(f"pipelines {mode} below the speed target")
    growth = results["engine"]["rss_mb"] / results["engine_small"]["rss_mb"]
    results["rss_growth"] = growth
    print(
        f"  peak RSS: {results['engine_small']['rss_mb']:.0f} MB at {rows // 10:,} rows, "
        f"{results['engine']['rss_mb']:.0f} MB at {rows:,} rows: x{growth:.2f} (target <= 1.20)"
    )
    if growth > 1.2:
        warn("pipelines peak RSS grew more than 20% for 10x the input")
    path = write_result(config, RESULT_FILE, results)
    print(f"  wrote {path}")
    return results


if __name__ == "__main__":
    # ``python -m tests.bench.pipelines``: this section alone; with
    # ``MODE SRC DB`` arguments: one contender (how ``_run_child`` calls it).
    if len(sys.argv) > 1:
        child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        run(BenchConfig.from_env())
