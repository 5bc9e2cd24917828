"""The engine's fast path (file source and SQLite table on one worker thread):
order, counters and write rejects, the reject limit and cancellation, with
real connectors on temp files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from datamcp.adapters.pipelines import PipelineConnectors
from datamcp.core.pipelines.engine import Engine, Progress, RejectLimit
from datamcp.core.pipelines.ports import ReadContext
from datamcp.core.pipelines.spec import parse_spec


def _engine(tmp_path: Path, **kw: Any) -> Engine:
    connectors = PipelineConnectors(
        data_roots=[tmp_path], sql_connections={"out": f"sqlite:///{tmp_path / 'out.db'}"}
    )
    return Engine(connectors, **kw)


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def _nothing(p: Progress) -> None:
    return None


async def test_merge_keeps_row_order_counts_and_write_rejects(tmp_path: Path) -> None:
    # 1,000 rows over 100 keys: the last row of each key must win, so the
    # small chunk-sized writes after the first batch keep the file order.
    lines = ["k,v"] + [f"{'' if i == 5 else i % 100},{i}" for i in range(1000)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    spec = parse_spec(
        {
            "source": {"csv": {"path": "in.csv"}},
            "transforms": [{"cast": {"k": "integer", "v": "integer"}}, {"filter": "v >= 0"}],
            "destination": {
                "table": {"connection": "out", "table": "t", "mode": "merge", "keys": ["k"]}
            },
            "batch_size": 50,
        }
    )
    engine = _engine(tmp_path, chunk_rows=7, progress_every=0.0)
    seen: list[Progress] = []

    async def progress(p: Progress) -> None:
        seen.append(p)

    outcome = await engine.execute(spec, ReadContext("t", {}), "run-1", progress)
    source, *_, dest = outcome.stages
    assert (source.read, source.written) == (1000, 1000)
    assert (dest.read, dest.written, dest.rejected) == (1000, 999, 1)
    assert seen and seen[-1].final
    got = dict(_rows(tmp_path, "SELECT k, v FROM t"))
    assert got == {k: 900 + k for k in range(100)}


async def test_reject_limit_stops_the_worker_thread_early(tmp_path: Path) -> None:
    lines = ["n"] + ["x" if i % 2 else str(i) for i in range(200_000)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    spec = parse_spec(
        {
            "source": {"csv": {"path": "in.csv"}},
            "transforms": [{"cast": {"n": "integer"}}],
            "destination": {"table": {"connection": "out", "table": "t"}},
            "max_rejects": 10,
        }
    )
    engine = _engine(tmp_path, progress_every=3600.0)
    with pytest.raises(RejectLimit, match="more than max_rejects=10"):
        await engine.execute(spec, ReadContext("t", {}), "run-2", _nothing)
    assert _rows(tmp_path, "SELECT name FROM sqlite_master") == []


async def test_cancel_mid_run_stops_the_thread_and_rolls_back(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(2_000_000)))
    spec = parse_spec(
        {
            "source": {"csv": {"path": "in.csv"}},
            "transforms": [{"cast": {"n": "integer"}}],
            "destination": {"table": {"connection": "out", "table": "t"}},
            "batch_size": 100,
        }
    )
    engine = _engine(tmp_path, progress_every=0.0)
    task = asyncio.create_task(engine.execute(spec, ReadContext("t", {}), "run-3", _nothing))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _rows(tmp_path, "SELECT name FROM sqlite_master") == []


def test_inlined_numeric_expressions_match_the_closures() -> None:
    # The fused loop inlines "col OP number" filters and "col OP col"
    # derives for numbers; nulls, text and bools must still take the
    # closures (null is not kept; 'a' > 1 and 'a' * 2 are rejected).
    from datamcp.core.pipelines.rows import RejectSink
    from datamcp.core.pipelines.transforms import _Single, compile_stages, fuse

    values: list[Any] = [None, 0, 1, 2.5, -3, True, "a", "7", 10**20, float("nan")]
    rows = [[a, b] for a in values for b in values]
    transforms = parse_spec(
        {
            "source": {"csv": {"path": "x.csv"}},
            "transforms": [
                {"derive": {"column": "p", "expr": "a * b"}},
                {"derive": {"column": "s", "expr": "a - b"}},
                {"filter": "a >= 0.5"},
            ],
            "destination": {"csv": {"path": "y.csv"}},
        }
    ).transforms

    def run(fused: bool) -> tuple[list[Any], list[tuple[Any, ...]]]:
        stages, _ = compile_stages(transforms, ["a", "b"], params={}, lookups={})
        runners = fuse(stages) if fused else [_Single(s) for s in stages]
        sink = RejectSink(keep=1000)
        out = [list(r) for r in rows]
        for runner in runners:
            out = runner.run(out, sink)
        # Stage by stage lists rejects per stage; fused, per row: compare sets.
        return [repr(r) for r in out], sorted(repr((r.row, r.reason)) for r in sink.kept)

    fused, plain = run(True), run(False)
    assert fused == plain
    assert fused[0] and fused[1]  # some rows kept, some rejected
