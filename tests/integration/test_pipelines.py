"""PipelineService through the real server: declare, validate, run to the
destination, rejects, incremental cursors, idempotent starts, cancellation,
events, tenancy; on SQLite and PostgreSQL (the app database)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from datamcp.entrypoints.grpc.values import from_value
from datamcp.v1 import events_pb2, events_pb2_grpc, pipelines_pb2_grpc
from datamcp.v1 import pipelines_pb2 as pb
from tests.support import (
    API_KEY,
    RunningServer,
    api_key_config,
    apikey,
    make_settings,
    rich_details,
    running_server,
)

S = pb.RunState
OTHER_KEY = "other-tenant-key-0123456789abcdef"


def overrides(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data = tmp_path / "files"
    data.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "rate_limit.enabled": False,
        "pipelines.data_roots": [str(data)],
        "pipelines.sql_connections": {"out": f"sqlite:///{tmp_path / 'out.db'}"},
        "pipelines.progress_interval": 0.05,
        "pipelines.retry_base_delay": 0.01,
    }
    values.update(extra)
    return values


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    settings = make_settings(tmp_path, database_url, **overrides(tmp_path))
    async with running_server(settings) as s:
        yield s


def stub(server: RunningServer) -> pipelines_pb2_grpc.PipelineServiceStub:
    return pipelines_pb2_grpc.PipelineServiceStub(server.channel())


def write_csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "files" / name
    path.write_text(text)
    return path


ORDERS = """id,customer,amount,qty,status
1,ann,10.5,2,paid
2,bob,abc,1,paid
3,cid,7.25,4,refunded
4,dan,100,1,paid
5,eve,3,x,paid
6,fay,1
"""

SPEC_YAML = """
name: orders
description: paid orders with totals
source:
  csv: {path: orders.csv}
transforms:
  - cast: {amount: float, qty: integer}
  - filter: "status == 'paid'"
  - derive: {column: total, expr: "amount * qty"}
  - select: [id, customer, total]
destination:
  table: {connection: out, table: orders, mode: append}
"""


def table_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def wait_final(s: pipelines_pb2_grpc.PipelineServiceStub, run_id: str) -> pb.Run:
    final = None
    async for msg in s.WatchRun(pb.WatchRunRequest(id=run_id), timeout=30):
        final = msg.run
    assert final is not None
    return final


async def test_yaml_pipeline_runs_end_to_end_with_rejects(
    server: RunningServer, tmp_path: Path
) -> None:
    write_csv(tmp_path, "orders.csv", ORDERS)
    s = stub(server)
    created = (await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=SPEC_YAML))).pipeline
    assert created.name == "orders" and created.version == 1
    assert created.spec.destination.table.mode == pb.WRITE_MODE_APPEND
    run = (await s.RunPipeline(pb.RunPipelineRequest(id="orders"))).run
    assert run.state in (S.RUN_STATE_PENDING, S.RUN_STATE_RUNNING, S.RUN_STATE_SUCCEEDED)
    final = await wait_final(s, run.id)
    assert final.state == S.RUN_STATE_SUCCEEDED, final.error
    assert (final.rows_read, final.rows_written, final.rows_rejected) == (6, 2, 3)
    stages = {st.stage: st for st in final.stages}
    assert stages["transforms[0].cast"].rejected == 2
    assert stages["source"].rejected == 1
    assert stages["destination"].written == 2
    assert table_rows(tmp_path, "SELECT id, customer, total FROM orders ORDER BY id") == [
        ("1", "ann", 21.0),
        ("4", "dan", 100.0),
    ]
    got = await s.GetRun(pb.GetRunRequest(id=run.id, reject_limit=10))
    reasons = sorted(r.reason for r in got.rejects)
    assert any("expected 5 fields" in r for r in reasons)
    assert any("'abc' is not a number" in r for r in reasons)
    assert any("'x' is not an integer" in r for r in reasons)
    bad = next(r for r in got.rejects if "abc" in r.reason)
    assert bad.stage == "transforms[0].cast"
    assert from_value(bad.row.fields["customer"]) == "bob"


async def test_invalid_specs_give_field_violations(server: RunningServer, tmp_path: Path) -> None:
    s = stub(server)
    bad = """
name: Bad Name
source: {csv: {path: ../../etc/passwd}}
transforms:
  - filter: "amount >"
  - cast: {amount: decimal}
  - explode: {}
destination: {table: {connection: nope, table: "x-y", mode: merge}}
schedule: "every day"
"""
    with pytest.raises(grpc.RpcError) as info:
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in rich_details(info.value)["BadRequest"].field_violations}
    assert {
        "transforms[0].filter.expr",
        "transforms[1].cast.columns.amount",
        "transforms[2]",
        "destination.table.table",
        "destination.table.keys",
        "schedule",
        "name",
    } <= fields
    # Validate answers with the same problems instead of failing.
    answer = await s.ValidatePipeline(pb.ValidatePipelineRequest(spec_text=bad))
    assert not answer.valid
    assert {p.field for p in answer.problems} >= {"schedule"}
    # Config-dependent problems: traversal and unknown connection.
    spec = SPEC_YAML.replace("orders.csv", "../outside.csv").replace(
        "connection: out", "connection: nope"
    )
    answer = await s.ValidatePipeline(pb.ValidatePipelineRequest(spec_text=spec))
    problems = {p.field: p.description for p in answer.problems}
    assert "outside the data roots" in problems["source.csv.path"]
    assert "unknown connection 'nope'" in problems["destination.table.connection"]
    with pytest.raises(grpc.RpcError) as info:
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_idempotent_start_busy_pipeline_and_cancel(
    server: RunningServer, tmp_path: Path
) -> None:
    lines = "".join(f"{i},{i}\n" for i in range(300_000))
    (tmp_path / "files" / "big.csv").write_text("id,v\n" + lines)
    spec = {
        "name": "slow",
        "source": {"csv": {"path": "big.csv"}},
        "transforms": [{"cast": {"id": "integer"}}, {"sort": ["-id"]}],
        "destination": {"table": {"connection": "out", "table": "slow", "mode": "replace"}},
        "batch_size": 200,
    }
    s = stub(server)
    await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
    first = await s.RunPipeline(pb.RunPipelineRequest(id="slow", request_id="r-1"))
    again = await s.RunPipeline(pb.RunPipelineRequest(id="slow", request_id="r-1"))
    assert again.duplicate and again.run.id == first.run.id
    with pytest.raises(grpc.RpcError) as info:
        await s.RunPipeline(pb.RunPipelineRequest(id="slow"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(info.value)["ErrorInfo"].reason == "PIPELINE_BUSY"
    cancelled = (await s.CancelRun(pb.CancelRunRequest(id=first.run.id))).run
    assert cancelled.state == S.RUN_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as info:
        await s.CancelRun(pb.CancelRunRequest(id=first.run.id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert table_rows(tmp_path, "SELECT name FROM sqlite_master WHERE type='table'") == []
    runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="slow"))).runs
    assert [r.state for r in runs] == [S.RUN_STATE_CANCELLED]


async def test_incremental_merge_cursor_and_events(server: RunningServer, tmp_path: Path) -> None:
    write_csv(tmp_path, "users.csv", "id,name,seen\n1,ann,1\n2,bob,2\n")
    spec = {
        "name": "users",
        "source": {"csv": {"path": "users.csv"}},
        "transforms": [{"cast": {"id": "integer", "seen": "integer"}}],
        "destination": {
            "table": {"connection": "out", "table": "users", "mode": "merge", "keys": ["id"]}
        },
        "incremental": {"column": "seen"},
    }
    s = stub(server)
    events = events_pb2_grpc.EventServiceStub(server.channel())
    await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
    run1 = await wait_final(s, (await s.RunPipeline(pb.RunPipelineRequest(id="users"))).run.id)
    assert run1.state == S.RUN_STATE_SUCCEEDED and run1.rows_written == 2
    assert from_value(run1.cursor_end) == 2
    write_csv(tmp_path, "users.csv", "id,name,seen\n1,ann,1\n2,bobby,3\n3,cid,4\n")
    run2 = await wait_final(s, (await s.RunPipeline(pb.RunPipelineRequest(id="users"))).run.id)
    assert run2.rows_read == 3 and run2.rows_written == 2
    assert from_value(run2.cursor_start) == 2 and from_value(run2.cursor_end) == 4
    assert table_rows(tmp_path, "SELECT id, name FROM users ORDER BY id") == [
        (1, "ann"),
        (2, "bobby"),
        (3, "cid"),
    ]
    got = (await s.GetPipeline(pb.GetPipelineRequest(id="users"))).pipeline
    assert from_value(got.cursor) == 4
    replay = events.Replay(
        events_pb2.ReplayRequest(filter=events_pb2.EventFilter(types=["pipeline.run.*"]))
    )
    seen = [(e.event.type, e.event.subject) async for e in replay]
    for run in (run1, run2):
        kinds = [t for t, subject in seen if subject == run.id]
        assert kinds[0] == "pipeline.run.started" and kinds[-1] == "pipeline.run.succeeded"


async def test_freeze_contract_fails_and_tenants_are_isolated(
    tmp_path: Path, database_url: str
) -> None:
    keys = [
        api_key_config(API_KEY, "alice", "acme", ["user"]),
        api_key_config(OTHER_KEY, "olaf", "other", ["user"]),
    ]
    settings = make_settings(
        tmp_path, database_url, **overrides(tmp_path, **{"auth.api_keys": keys})
    )
    db = sqlite3.connect(tmp_path / "out.db")
    db.execute("CREATE TABLE frozen (id TEXT)")
    db.commit()
    db.close()
    write_csv(tmp_path, "f.csv", "id,extra\n1,x\n")
    spec = {
        "name": "frozen",
        "source": {"csv": {"path": "f.csv"}},
        "destination": {"table": {"connection": "out", "table": "frozen", "contract": "freeze"}},
    }
    async with running_server(settings) as srv:
        s = stub(srv)
        await s.CreatePipeline(
            pb.CreatePipelineRequest(spec_text=json.dumps(spec)), metadata=apikey()
        )
        with pytest.raises(grpc.RpcError) as info:
            await s.GetPipeline(pb.GetPipelineRequest(id="frozen"), metadata=apikey(OTHER_KEY))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        run = (await s.RunPipeline(pb.RunPipelineRequest(id="frozen"), metadata=apikey())).run
        with pytest.raises(grpc.RpcError) as info:
            await s.GetRun(pb.GetRunRequest(id=run.id), metadata=apikey(OTHER_KEY))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        final = run
        async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), metadata=apikey()):
            final = msg.run
        assert final.state == S.RUN_STATE_FAILED
        assert final.error.reason == "SCHEMA_FROZEN"
    assert table_rows(tmp_path, "SELECT * FROM frozen") == []


async def test_router_trigger_and_pipeline_agent_run_pipelines(
    tmp_path: Path, database_url: str
) -> None:
    from datamcp.v1 import agents_pb2, agents_pb2_grpc

    trigger = {
        "name": "load-on-upload",
        "types": ["file.uploaded"],
        "action": "pipeline.run",
        "params": {"pipeline": "copy"},
    }
    settings = make_settings(
        tmp_path, database_url, **overrides(tmp_path, **{"events.triggers": [trigger]})
    )
    write_csv(tmp_path, "in.csv", "a,b\n1,2\n3,4\n")
    spec = {
        "name": "copy",
        "source": {"csv": {"path": "in.csv"}},
        "transforms": [{"derive": {"column": "src", "expr": "coalesce($event.name, 'agent')"}}],
        "destination": {"jsonl": {"path": "out.jsonl"}},
        "params": {"event": {}},
    }
    async with running_server(settings) as srv:
        s = stub(srv)
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
        ev = events_pb2_grpc.EventServiceStub(srv.channel())
        await ev.Publish(
            events_pb2.PublishRequest(
                event=events_pb2.CloudEvent(
                    type="file.uploaded", source="/t", id="up-1", data=to_value({"name": "f1"})
                )
            )
        )
        async with asyncio.timeout(15):
            while True:
                runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="copy"))).runs
                if runs and runs[0].state == S.RUN_STATE_SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
        assert runs[0].trigger == "event" and len(runs) == 1
        lines = (tmp_path / "files" / "out.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == [
            {"a": "1", "b": "2", "src": "f1"},
            {"a": "3", "b": "4", "src": "f1"},
        ]
        agents = agents_pb2_grpc.AgentServiceStub(srv.channel())
        task = (
            await agents.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(
                    task=agents_pb2.TaskSpec(
                        capability="pipeline.run", input=to_value({"pipeline": "copy"})
                    )
                ),
                timeout=20,
            )
        ).task
        assert task.state == agents_pb2.TASK_STATE_SUCCEEDED, task.error
        result = from_value(task.result)
        assert result["state"] == "SUCCEEDED" and result["written"] == 2


def to_value(data: Any) -> Any:
    from datamcp.entrypoints.grpc.values import to_value as tv

    return tv(data)


GROUP_SPEC = {
    "name": "by-region",
    "source": {"csv": {"path": "sales.csv", "null_values": ["NA"]}},
    "transforms": [
        {"cast": {"amount": "float"}},
        {"filter": "status != 'void'"},
        {
            "aggregate": {
                "group_by": ["region"],
                "aggregations": [
                    {"op": "count", "output": "n"},
                    {"op": "sum", "column": "amount", "output": "total"},
                ],
            }
        },
    ],
    "destination": {"table": {"connection": "out", "table": "by_region"}},
}


@pytest.mark.parametrize("kept", [1000, 2])
async def test_csv_aggregate_counts_rejects_and_keeps_group_order(
    tmp_path: Path, database_url: str, kept: int
) -> None:
    """CSV -> cast -> filter -> aggregate: the rows a cast rejects or a filter
    drops are out of the sums, counted at their stage, each reject kept with
    its reason (up to rejects_kept, all counted); groups come in the order
    they are first seen."""
    lines = ["region,amount,status"]
    for i in range(300):
        amount = "bad" if i % 50 == 7 else ("NA" if i % 40 == 3 else f"{i % 10}.5")
        lines.append(
            f"{['west', 'east', 'north'][i % 3]},{amount},{'void' if i % 25 == 0 else 'ok'}"
        )
    settings = make_settings(
        tmp_path, database_url, **overrides(tmp_path, **{"pipelines.rejects_kept": kept})
    )
    write_csv(tmp_path, "sales.csv", "\n".join(lines) + "\n")
    async with running_server(settings) as srv:
        s = stub(srv)
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(GROUP_SPEC)))
        run = (await s.RunPipeline(pb.RunPipelineRequest(id="by-region"))).run
        final = await wait_final(s, run.id)
        assert final.state == S.RUN_STATE_SUCCEEDED, final.error
        stages = {st.stage: st for st in final.stages}
        cast, keep = stages["transforms[0].cast"], stages["transforms[1].filter"]
        bad = [i for i in range(300) if i % 50 == 7]
        void = [i for i in range(300) if i % 25 == 0 and i not in bad]
        assert (final.rows_read, cast.read, cast.rejected) == (300, 300, len(bad))
        assert (keep.read, keep.written) == (300 - len(bad), 300 - len(bad) - len(void))
        assert stages["transforms[2].aggregate"].written == 3
        assert final.rows_rejected == len(bad) and final.rows_written == 3
        got = await s.GetRun(pb.GetRunRequest(id=run.id, reject_limit=100))
        assert len(got.rejects) == min(kept, len(bad))
        assert all(r.reason == "cast amount: 'bad' is not a number" for r in got.rejects)
        assert all(r.stage == "transforms[0].cast" for r in got.rejects)
    alive = [i for i in range(300) if i not in bad and i not in void]
    expected = []
    for region in ("east", "north", "west"):  # row 0 (west) is void
        rows = [i for i in alive if ["west", "east", "north"][i % 3] == region]
        amounts = [i % 10 + 0.5 for i in rows if i % 40 != 3]
        expected.append((region, len(rows), sum(amounts)))
    got_rows = table_rows(tmp_path, "SELECT region, n, total FROM by_region ORDER BY rowid")
    assert [(r, n) for r, n, _t in got_rows] == [(r, n) for r, n, _t in expected]
    assert all(abs(t - e[2]) < 1e-9 for (_r, _n, t), e in zip(got_rows, expected, strict=True))
