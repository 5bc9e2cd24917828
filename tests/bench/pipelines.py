"""Section "pipelines": batch pipelines against the tools users would pick.

Real-shaped input (``pipeline_data``): ``BENCH_PIPELINE_ROWS`` orders
(default 1,000,000) of 20 mixed columns with ~3% ``NA`` markers, quoted text
with commas, quotes and line breaks, plus a 40-row regions table. Three
workloads, CSV -> SQLite table:

- W1: cast amount/price/qty (NA is null), keep ``amount > 50 and status !=
  'cancelled'``, derive ``total = qty * price``;
- W2: group by region_code, category: count, avg(amount), max(price);
- W3: left lookup of regions, then dedupe on order_ref (first row wins).

Contenders, each in its own process, one after another on the same files in
the same run, for ``BENCH_PIPELINE_ROUNDS`` rounds (default 3; the best time
of each counts, so a burst of other work on a shared machine does not decide
a ratio): ``polars``, ``duckdb`` and ``pandas`` (hand-written scripts,
``pipeline_peers``), ``engine`` (the pipeline engine in-process) and ``rpc``
(the real server: CreatePipeline, RunPipeline, WatchRun to the end). Each
contender's CPU time (user + system, all its threads) is printed beside its
time: on a machine shared with other work it shows the work done when the
wall clock cannot. Targets per workload: engine >= 2.0x pandas and >= 0.6x the faster of Polars and
DuckDB; rpc within 10% of the engine. Memory: the engine again on a file 10x
smaller; peak RSS on the full file at most 1.2x that.

The earlier synthetic workload (10 columns, cast + filter + derive) runs too,
for the engine of this tree and for the engine before the columnar rewrite
(``BENCH_PIPELINE_BEFORE``, a commit: its tree is exported and run the same
way); this tree must be no slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.procs import REPO_ROOT

NAME = "pipelines: real-shaped CSV -> SQLite, against Polars, DuckDB, pandas"
RESULT_FILE = "pipelines.json"
ROWS_ENV = "BENCH_PIPELINE_ROWS"
BEFORE_ENV = "BENCH_PIPELINE_BEFORE"
ROUNDS_ENV = "BENCH_PIPELINE_ROUNDS"
DEFAULT_ROUNDS = 3
CONTENDERS = ("polars", "duckdb", "pandas", "engine", "rpc")
DEFAULT_ROWS = 1_000_000
DEFAULT_BEFORE = "8fe2440"  # the last commit of the row-at-a-time engine
CHILD_TIMEOUT = 600.0
WORKLOADS = ("w1", "w2", "w3")
NULLS = ["NA"]

SPECS: dict[str, dict[str, Any]] = {
    "w1": {
        "transforms": [
            {"cast": {"amount": "float", "price": "float", "qty": "integer"}},
            {"filter": "amount > 50 and status != 'cancelled'"},
            {"derive": {"column": "total", "expr": "qty * price"}},
        ]
    },
    "w2": {
        "transforms": [
            {"cast": {"amount": "float", "price": "float"}},
            {
                "aggregate": {
                    "group_by": ["region_code", "category"],
                    "aggregations": [
                        {"op": "count", "output": "n"},
                        {"op": "avg", "column": "amount", "output": "avg_amount"},
                        {"op": "max", "column": "price", "output": "max_price"},
                    ],
                }
            },
        ]
    },
    "w3": {
        "transforms": [
            {
                "lookup": {
                    "source": {"csv": {"path": "regions.csv"}},
                    "on": {"region_code": "code"},
                    "columns": ["region_name", "manager"],
                }
            },
            {"dedupe": ["order_ref"]},
        ]
    },
}
SYNTHETIC_COLUMNS = ["id", "name", "city", "amount", "qty", "price", "active", "day", "cat", "note"]
SYNTHETIC: dict[str, Any] = {
    "transforms": [
        {"cast": {"amount": "float"}},
        {"filter": "amount > 50"},
        {"cast": {"id": "integer", "qty": "integer", "price": "float"}},
        {"derive": {"column": "total", "expr": "qty * price"}},
    ]
}


def rows_from_env(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    text = env.get(ROWS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_ROWS
    if not text.isdigit() or int(text) < 1000:
        raise ValueError(f"{ROWS_ENV} must be a whole number >= 1000, got {text!r}")
    return int(text)


def rounds_from_env(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    text = env.get(ROUNDS_ENV, "").strip()
    if not text:
        return DEFAULT_ROUNDS
    if not text.isdigit() or not 1 <= int(text) <= 20:
        raise ValueError(f"{ROUNDS_ENV} must be a whole number from 1 to 20, got {text!r}")
    return int(text)


def spec_for(workload: str, src: Path) -> dict[str, Any]:
    if workload == "synthetic":
        return {
            "source": {"csv": {"path": src.name}},
            **SYNTHETIC,
            "destination": {"table": {"connection": "out", "table": "synthetic"}},
        }
    return {
        "source": {"csv": {"path": src.name, "null_values": NULLS}},
        **SPECS[workload],
        "destination": {"table": {"connection": "out", "table": workload}},
    }


def generate_synthetic(path: Path, rows: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    cities = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Lima", "Quito"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SYNTHETIC_COLUMNS)
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
                    "abcde"[i % 5],
                    "lorem ipsum dolor",
                ]
            )


# ---- contenders (in a child process) ---------------------------------------------------


async def _engine(workload: str, src: Path, db_path: Path) -> int:
    from datamcp.adapters.pipelines import PipelineConnectors
    from datamcp.core.pipelines.engine import Engine
    from datamcp.core.pipelines.ports import ReadContext
    from datamcp.core.pipelines.spec import parse_spec

    spec = parse_spec(spec_for(workload, src))
    connectors = PipelineConnectors(
        data_roots=[src.parent], sql_connections={"out": f"sqlite:///{db_path}"}
    )
    engine = Engine(connectors)

    async def progress(_p: Any) -> None:
        return None

    outcome = await engine.execute(spec, ReadContext("bench", {}), "bench-run", progress)
    return int(outcome.stages[-1].written)


async def _rpc(workload: str, src: Path, db_path: Path) -> tuple[int, float]:
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
    spec_text = json.dumps({"name": "bench", **spec_for(workload, src)})
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


def child(mode: str, workload: str, src: Path, db_path: Path) -> None:
    """Run one contender; the clock covers the job only (imports, and the
    server start for ``rpc``, are outside it, the same for every contender)."""
    from tests.bench.pipeline_peers import PEERS

    if mode in PEERS:
        import adbc_driver_sqlite.dbapi  # noqa: F401
        import duckdb  # noqa: F401
        import pandas  # noqa: F401
        import polars  # noqa: F401
    else:
        import datamcp.adapters.pipelines
        import datamcp.bootstrap

        with contextlib.suppress(ImportError):  # the engine's modules (absent before DuckDB)
            import pyarrow.compute  # noqa: F401

            import datamcp.adapters.pipelines.csv
            import datamcp.adapters.pipelines.sqlite_table
            import datamcp.core.pipelines.transforms  # noqa: F401
    gc.freeze()
    regions = src.parent / "regions.csv"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    if mode in PEERS:
        written = PEERS[mode](workload, src, regions, db_path)
    elif mode == "engine":
        written = asyncio.run(_engine(workload, src, db_path))
    elif mode == "rpc":
        written, started = asyncio.run(_rpc(workload, src, db_path))
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024.0
    cpu = usage.ru_utime + usage.ru_stime - cpu  # every thread's, the server start included for rpc
    print(json.dumps({"seconds": seconds, "written": written, "rss_mb": rss_mb, "cpu_s": cpu}))


def _run_child(
    mode: str, workload: str, src: Path, db_path: Path, pythonpath: str | None = None
) -> dict[str, Any]:
    if db_path.exists():
        db_path.unlink()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.pipelines", mode, workload, str(src), str(db_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
        env=env,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} {workload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def _before_tree(commit: str, root: Path) -> str | None:
    """The ``src`` and ``gen`` of ``commit``, exported for the synthetic baseline."""
    archive = root / "before.tar"
    done = subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), commit, "src", "gen"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        warn(f"cannot export {commit} for the synthetic baseline; skipped")
        return None
    tree = root / "before"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return f"{tree / 'src'}:{tree / 'gen'}:{REPO_ROOT}"


def _line(label: str, r: Mapping[str, Any]) -> None:
    each = " / ".join(f"{t:.2f}" for t in r.get("rounds", []))
    print(
        f"  {label:<18} {r['seconds']:7.2f} s  {r['rows_per_s']:>11,.0f} rows/s  "
        f"written {r['written']:,}  peak RSS {r['rss_mb']:.0f} MB  CPU {r.get('cpu_s', 0):.2f} s"
        + (f"  (rounds: {each} s)" if len(r.get("rounds", [])) > 1 else ""),
        flush=True,
    )


def run(config: BenchConfig) -> Mapping[str, Any]:  # noqa: PLR0915 - one report
    from tests.bench.pipeline_data import COLUMNS, generate, generate_regions

    rows = rows_from_env()
    rounds = rounds_from_env()
    print(
        f"  {rows:,} rows x {len(COLUMNS)} columns (~3% NA); each contender in its own "
        f"process; {rounds} round(s), one contender after another, the best of each"
    )
    results: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="datamcp-bench-pipelines-") as tmp:
        root = Path(tmp)
        big, small = root / "orders.csv", root / "small" / "orders.csv"
        small.parent.mkdir()
        generate(big, rows)
        generate(small, rows // 10)
        generate_regions(root / "regions.csv")
        generate_regions(small.parent / "regions.csv")
        for wl in WORKLOADS:
            print(f"  {wl}:")
            per: dict[str, Any] = {}
            for n in range(rounds):
                for mode in CONTENDERS:
                    r = _run_child(mode, wl, big, root / f"{mode}-{wl}.db")
                    r["rows_per_s"] = rows / r["seconds"]
                    r["rounds"] = [*per.get(mode, {}).get("rounds", []), r["seconds"]]
                    if mode not in per or r["seconds"] < per[mode]["seconds"]:
                        per[mode] = {**r, "rss_mb": max(r["rss_mb"], per.get(mode, r)["rss_mb"])}
                    else:
                        per[mode]["rounds"] = r["rounds"]
                        per[mode]["rss_mb"] = max(r["rss_mb"], per[mode]["rss_mb"])
                    if n == rounds - 1:
                        _line(mode, per[mode])
            if len({per[m]["written"] for m in per}) != 1:
                warn(f"{wl}: contenders disagree on rows written")
            per["engine_small"] = _run_child("engine", wl, small, root / f"small-{wl}.db")
            best = max(per["polars"]["rows_per_s"], per["duckdb"]["rows_per_s"])
            engine = per["engine"]["rows_per_s"]
            per["engine_vs_pandas"] = engine / per["pandas"]["rows_per_s"]
            per["engine_vs_best_peer"] = engine / best
            per["rpc_vs_engine"] = per["rpc"]["rows_per_s"] / engine
            per["rss_growth"] = per["engine"]["rss_mb"] / per["engine_small"]["rss_mb"]
            ok = (
                per["engine_vs_pandas"] >= 2.0
                and per["engine_vs_best_peer"] >= 0.6
                and per["rpc_vs_engine"] >= 0.9
            )
            print(
                f"    engine {per['engine_vs_pandas']:.2f}x pandas (>= 2.0), "
                f"{per['engine_vs_best_peer']:.2f}x the faster of Polars/DuckDB (>= 0.6); "
                f"rpc {per['rpc_vs_engine']:.2f}x engine (>= 0.9); peak RSS "
                f"{per['engine_small']['rss_mb']:.0f} MB at {rows // 10:,} rows, "
                f"{per['engine']['rss_mb']:.0f} MB at {rows:,}: x{per['rss_growth']:.2f} "
                f"(<= 1.20){'' if ok else '  BELOW TARGET'}"
            )
            if not ok or per["rss_growth"] > 1.2:
                warn(f"pipelines {wl} below a target")
            results[wl] = per
        synthetic = root / "synthetic.csv"
        generate_synthetic(synthetic, rows)
        print("  synthetic (10 columns; cast + filter + derive):")
        now = _run_child("engine", "synthetic", synthetic, root / "syn-now.db")
        now["rows_per_s"] = rows / now["seconds"]
        _line("engine", now)
        results["synthetic"] = {"engine": now}
        commit = os.environ.get(BEFORE_ENV, DEFAULT_BEFORE)
        path = _before_tree(commit, root)
        if path is not None:
            before = _run_child("engine", "synthetic", synthetic, root / "syn-before.db", path)
            before["rows_per_s"] = rows / before["seconds"]
            _line(f"engine@{commit}", before)
            ratio = now["rows_per_s"] / before["rows_per_s"]
            results["synthetic"].update(before=before, ratio=ratio, before_commit=commit)
            print(f"    this tree {ratio:.2f}x the engine of {commit} (>= 1.0)")
            if ratio < 1.0:
                warn("pipelines synthetic workload slower than before")
    out = write_result(config, RESULT_FILE, results)
    print(f"  wrote {out}")
    return results


if __name__ == "__main__":
    # ``python -m tests.bench.pipelines``: this section alone; with
    # ``MODE WORKLOAD SRC DB`` arguments: one contender (how ``_run_child`` calls it).
    if len(sys.argv) > 1:
        child(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        run(BenchConfig.from_env())
