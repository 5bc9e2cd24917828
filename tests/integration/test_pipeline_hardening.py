"""Pipelines under hostile and unusual input, through the real server on
SQLite and PostgreSQL: no silent row loss, SQL sources on both databases,
range checks at the edge (nothing accepted can break a later read), caller
facing driver errors, and two tenants that never see each other's
pipelines, runs or rejects."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2

from datamcp.adapters.pipelines.csv import MAX_LINE
from datamcp.entrypoints.grpc.values import from_value, to_struct
from datamcp.v1 import pipelines_pb2 as pb
from datamcp.v1 import pipelines_pb2_grpc
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
INTERNALS = ("Traceback", "sqlalchemy", "asyncpg", "Error:", "[SQL", "SELECT", "<class", "secret")


def overrides(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data = tmp_path / "files"
    data.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "rate_limit.enabled": False,
        "pipelines.data_roots": [str(data)],
        "pipelines.sql_connections": {
            "out": f"sqlite:///{tmp_path / 'out.db'}",
            "src": f"sqlite:///{tmp_path / 'src.db'}",
        },
        "pipelines.progress_interval": 0.05,
        "pipelines.retry_base_delay": 0.01,
    }
    values.update(extra)
    return values


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    async with running_server(make_settings(tmp_path, database_url, **overrides(tmp_path))) as s:
        yield s


def stub(server: RunningServer) -> pipelines_pb2_grpc.PipelineServiceStub:
    return pipelines_pb2_grpc.PipelineServiceStub(server.channel())


async def run_to_end(
    s: pipelines_pb2_grpc.PipelineServiceStub, spec: dict[str, Any], **kw: Any
) -> pb.Run:
    md = kw.pop("metadata", None)
    await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)), metadata=md)
    run = (await s.RunPipeline(pb.RunPipelineRequest(id=spec["name"], **kw), metadata=md)).run
    async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), timeout=60, metadata=md):
        run = msg.run
    return run


def assert_counters_add_up(run: pb.Run) -> None:
    """Every row read is written or rejected (or dropped by a stage that
    drops by design); each stage reads what the one before wrote."""
    stages = list(run.stages)
    assert stages[0].stage == "source" and stages[-1].stage == "destination"
    assert run.rows_read == stages[0].read
    assert run.rows_written == stages[-1].written
    assert run.rows_rejected == sum(st.rejected for st in stages)
    for before, after in itertools.pairwise(stages):
        assert after.read == before.written, (before, after)
    for st in stages:
        if st.stage in {"source", "destination"} or ".cast" in st.stage:
            assert st.read == st.written + st.rejected, st


# ---- no silent row loss (issue item 6) ----------------------------------------------------


async def test_csv_field_over_the_size_limit_fails_the_run_never_drops_rows(
    server: RunningServer, tmp_path: Path
) -> None:
    s = stub(server)
    big = "y" * (MAX_LINE + 1024 * 1024)
    (tmp_path / "files" / "big.csv").write_text(f"a,b\n1,x\n2,{big}\n3\n4,z\n")
    spec = {
        "name": "big",
        "source": {"csv": {"path": "big.csv"}},
        "destination": {"table": {"connection": "out", "table": "big", "mode": "append"}},
    }
    run = await run_to_end(s, spec)
    assert run.state == S.RUN_STATE_FAILED, (run.rows_read, run.rows_written)
    assert run.error.reason == "SOURCE_ERROR"
    assert "line 3" in run.error.message and "limit" in run.error.message
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'big'").fetchall() == []
    finally:
        db.close()
    # Under the limit the same shape loads whole, and the counters add up.
    (tmp_path / "files" / "ok.csv").write_text(
        f"a,b\n1,x\n2,{'y' * (MAX_LINE - 1024 * 1024)}\n3,z\n4\n"
    )
    run = await run_to_end(s, {**spec, "name": "ok", "source": {"csv": {"path": "ok.csv"}}})
    assert run.state == S.RUN_STATE_SUCCEEDED, run.error
    assert (run.rows_read, run.rows_written, run.rows_rejected) == (4, 3, 1)
    assert_counters_add_up(run)


# ---- SQL sources on both databases (issue item 7) ----------------------------------------------


def sql_spec(name: str, connection: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": {
            "sql": {
                "connection": connection,
                "query": "SELECT id, name, score FROM people WHERE score >= :min ORDER BY id",
            }
        },
        "transforms": [{"derive": {"column": "double", "expr": "score * 2"}}],
        "destination": {"jsonl": {"path": f"{name}.jsonl"}},
        "params": {"min": 2},
    }


PEOPLE = [(1, "ann", 1), (2, "bob", 2), (3, "cid", 3)]


async def test_sql_source_on_sqlite(server: RunningServer, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "src.db")
    db.execute("CREATE TABLE people (id INTEGER, name TEXT, score INTEGER)")
    db.executemany("INSERT INTO people VALUES (?, ?, ?)", PEOPLE)
    db.commit()
    db.close()
    s = stub(server)
    run = await run_to_end(s, sql_spec("lite", "src"))
    assert run.state == S.RUN_STATE_SUCCEEDED, run.error
    lines = (tmp_path / "files" / "lite.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"id": 2, "name": "bob", "score": 2, "double": 4},
        {"id": 3, "name": "cid", "score": 3, "double": 6},
    ]
    assert_counters_add_up(run)
    # The source is read-only: a statement that writes fails the run.
    spec = sql_spec("writer", "src")
    spec["source"]["sql"]["query"] = (
        "WITH x AS (SELECT 1) SELECT * FROM x; DELETE FROM people"  # two statements
    )
    run = await run_to_end(s, spec)
    assert run.state == S.RUN_STATE_FAILED and run.error.reason == "SOURCE_ERROR"
    db = sqlite3.connect(tmp_path / "src.db")
    try:
        assert db.execute("SELECT count(*) FROM people").fetchone() == (3,)
    finally:
        db.close()


@pytest.mark.pg
async def test_sql_source_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute("CREATE TABLE people (id INTEGER, name TEXT, score INTEGER)")
        await conn.executemany("INSERT INTO people VALUES ($1, $2, $3)", PEOPLE)
    finally:
        await conn.close()
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'data' / 'app.db'}",
        **overrides(tmp_path, **{"pipelines.sql_connections": {"pg": pg_database}}),
    )
    async with running_server(settings) as srv:
        s = stub(srv)
        run = await run_to_end(s, sql_spec("pg", "pg"))
        # Driver errors while previewing: answers for the caller, with no
        # statement, parameter values or driver class names in them.
        for query, params in [
            ("SELECT * FROM people WHERE name = :x", {"x": {"secret": "value"}}),
            ("SELECT * FROM people WHERE id = CAST(:x AS INTEGER)", {"x": "secret"}),
            ("SELECT * FROM people WHERE id = :x", {"x": 1e30}),
            ("SELECT 1 / 0 AS broken", {}),
        ]:
            request = pb.ValidatePipelineRequest(
                spec_text=text(source={"sql": {"connection": "pg", "query": query}}),
                preview_rows=5,
            )
            if params:
                request.params.CopyFrom(to_struct(params))
            answer = await s.ValidatePipeline(request)
            assert not answer.valid, query
            [problem] = answer.problems
            assert not any(w in problem.description for w in INTERNALS), problem.description
    assert run.state == S.RUN_STATE_SUCCEEDED, run.error
    lines = (tmp_path / "files" / "pg.jsonl").read_text().splitlines()
    assert [json.loads(x)["name"] for x in lines] == ["bob", "cid"]
    assert_counters_add_up(run)


# ---- range checks at the edge (issue item 8) ---------------------------------------------------

BASE: dict[str, Any] = {
    "source": {"csv": {"path": "in.csv"}},
    "destination": {"jsonl": {"path": "out.jsonl"}},
}


def text(**extra: Any) -> str:
    return json.dumps({**BASE, **extra})


def yaml(extra: str) -> str:
    return "source: {csv: {path: in.csv}}\ndestination: {jsonl: {path: out.jsonl}}\n" + extra


def proto_spec(**timeout: int) -> pb.PipelineSpec:
    spec = pb.PipelineSpec()
    spec.source.csv.path = "in.csv"
    spec.destination.jsonl.path = "out.jsonl"
    spec.timeout.seconds = timeout.get("seconds", 0)
    spec.timeout.nanos = timeout.get("nanos", 0)
    return spec


def nan_params() -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    params.fields["x"].number_value = float("nan")
    return params


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


CREATE_CASES: list[tuple[str, pb.CreatePipelineRequest, str]] = [
    (
        "duration over range",
        pb.CreatePipelineRequest(name="d1", spec=proto_spec(seconds=10**12)),
        "spec.timeout",
    ),
    (
        "duration sign mismatch",
        pb.CreatePipelineRequest(name="d2", spec=proto_spec(seconds=3, nanos=-5)),
        "spec.timeout",
    ),
    (
        "duration past 7 days",
        pb.CreatePipelineRequest(name="d3", spec=proto_spec(seconds=10**9)),
        "spec.timeout",
    ),
    (
        "yaml timeout infinity",
        pb.CreatePipelineRequest(name="d4", spec_text=yaml("timeout: .inf")),
        "timeout",
    ),
    (
        "yaml params NaN",
        pb.CreatePipelineRequest(name="d5", spec_text=yaml("params: {x: .nan}")),
        "params.x",
    ),
    (
        "params nested too deep",
        pb.CreatePipelineRequest(name="d6", spec_text=text(params={"d": deep(40)})),
        "params.d",
    ),
    (
        "integer over 64 bits",
        pb.CreatePipelineRequest(name="d7", spec_text=yaml(f"params: {{x: {10**30}}}")),
        "params.x",
    ),
    (
        "range bound NaN",
        pb.CreatePipelineRequest(
            name="d8", spec_text=yaml("transforms: [{validate: {range: {a: {min: .nan}}}}]")
        ),
        "transforms[0].validate.range.a.min",
    ),
    (
        "cursor Infinity",
        pb.CreatePipelineRequest(
            name="d9", spec_text=yaml("incremental: {column: a, initial: .inf}")
        ),
        "incremental.initial",
    ),
    (
        "5,000-character path",
        pb.CreatePipelineRequest(name="d10", spec_text=text(source={"csv": {"path": "x" * 5000}})),
        "source.csv.path",
    ),
    (
        "path part too long",
        pb.CreatePipelineRequest(
            name="d11", spec_text=text(destination={"csv": {"path": "y" * 900}})
        ),
        "destination.csv.path",
    ),
    (
        "NUL in a path",
        pb.CreatePipelineRequest(name="d12", spec_text=text(source={"csv": {"path": "a\x00b"}})),
        "source.csv.path",
    ),
    (
        "cron that never fires",
        pb.CreatePipelineRequest(name="d13", spec_text=text(schedule="0 0 30 2 *")),
        "schedule",
    ),
    (
        "1 MB description",
        pb.CreatePipelineRequest(name="d14", description="d" * 1_000_000, spec_text=text()),
        "description",
    ),
    (
        "unquoted YAML date",
        pb.CreatePipelineRequest(
            name="d15", spec_text=yaml("incremental: {column: a, initial: 2024-01-01}")
        ),
        "incremental.initial",
    ),
    (
        "alias bomb",
        pb.CreatePipelineRequest(
            name="d16",
            spec_text=yaml(
                "params:\n  a: &a [1,1,1,1,1,1,1,1,1,1]\n  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                "  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                "  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n  f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
            ),
        ),
        "params",
    ),
    (
        "event type too long",
        pb.CreatePipelineRequest(name="d17", spec_text=text(triggers=[{"types": ["a" * 5000]}])),
        "triggers[0].types[0]",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "field"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
async def test_out_of_range_spec_values_are_invalid_argument(
    server: RunningServer, case: str, request_: pb.CreatePipelineRequest, field: str
) -> None:
    s = stub(server)
    with pytest.raises(grpc.RpcError) as info:
        await s.CreatePipeline(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    fields = [v.field for v in rich_details(info.value)["BadRequest"].field_violations]
    assert any(f.startswith(field) for f in fields), fields
    # ValidatePipeline answers the same problems (or refuses a malformed
    # Duration as a bad request).
    if request_.HasField("spec"):
        check = pb.ValidatePipelineRequest(spec=request_.spec)
    else:
        check = pb.ValidatePipelineRequest(spec_text=request_.spec_text or text())
    try:
        answer = await s.ValidatePipeline(check)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert answer.valid == (case == "1 MB description")
    # Nothing was stored that could break a later read.
    assert (await s.ListPipelines(pb.ListPipelinesRequest())).pipelines == []


async def test_request_fields_are_range_checked(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "files" / "in.csv").write_text("a\n1\n")
    s = stub(server)
    await s.CreatePipeline(pb.CreatePipelineRequest(name="ok", spec_text=text()))
    bad: list[tuple[Any, Any, str]] = [
        (s.RunPipeline, pb.RunPipelineRequest(id="ok", params=nan_params()), "params.x"),
        (s.RunPipeline, pb.RunPipelineRequest(id="ok", request_id="a\x00b"), "request_id"),
        (
            s.RunPipeline,
            pb.RunPipelineRequest(id="ok", correlation_id="c" * 1000),
            "correlation_id",
        ),
        (
            s.RunPipeline,
            pb.RunPipelineRequest(id="ok", params=to_struct({"d": deep(26)})),
            "params.d",
        ),
        (
            s.ValidatePipeline,
            pb.ValidatePipelineRequest(spec_text=text(), preview_rows=1, params=nan_params()),
            "params.x",
        ),
        (s.GetPipeline, pb.GetPipelineRequest(id="x" * 10_000), "id"),
        (s.DeletePipeline, pb.DeletePipelineRequest(id="x" * 10_000), "id"),
        (s.GetRun, pb.GetRunRequest(id="x" * 10_000), "id"),
        (s.GetRun, pb.GetRunRequest(id="r", reject_limit=-1), "reject_limit"),
        (s.CancelRun, pb.CancelRunRequest(id="x" * 10_000), "id"),
        (s.ListRuns, pb.ListRunsRequest(pipeline="x" * 10_000), "pipeline"),
        (s.ListRuns, pb.ListRunsRequest(page_size=-1), "page_size"),
        (
            s.UpdatePipeline,
            pb.UpdatePipelineRequest(id="ok", spec_text=text(), expected_version=-3),
            "expected_version",
        ),
        (
            s.ValidatePipeline,
            pb.ValidatePipelineRequest(spec_text=text(), preview_rows=10**6),
            "preview_rows",
        ),
    ]
    for method, request, field in bad:
        with pytest.raises(grpc.RpcError) as info:
            await method(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.details())
        fields = [v.field for v in rich_details(info.value)["BadRequest"].field_violations]
        assert any(f.startswith(field) for f in fields), (field, fields)
        assert len(info.value.details() or "") < 300
    with pytest.raises(grpc.RpcError) as info:
        async for _ in s.WatchRun(pb.WatchRunRequest(id="x" * 10_000)):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The largest accepted values read back through every API.
    edge = {
        "name": "e" * 128,
        "description": "d" * 4096,
        **BASE,
        "timeout": 7 * 24 * 3600,
        "params": {"n": 2**63 - 1, "f": 1e308, "nested": deep(21)},
        "incremental": {"column": "a", "initial": -(2**63) + 1},
        "max_rejects": 2**62,
    }
    await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(edge)))
    got = (await s.GetPipeline(pb.GetPipelineRequest(id="e" * 128))).pipeline
    assert got.spec.timeout.seconds == 7 * 24 * 3600
    listed = (await s.ListPipelines(pb.ListPipelinesRequest())).pipelines
    assert {p.name for p in listed} == {"ok", "e" * 128}
    run = (
        await s.RunPipeline(
            pb.RunPipelineRequest(id="ok", request_id="r" * 128, correlation_id="c" * 128)
        )
    ).run
    async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), timeout=30):
        run = msg.run
    assert run.state == S.RUN_STATE_SUCCEEDED and run.correlation_id == "c" * 128
    assert [r.id for r in (await s.ListRuns(pb.ListRunsRequest())).runs] == [run.id]


async def test_driver_errors_in_validate_are_caller_facing(
    server: RunningServer, tmp_path: Path
) -> None:
    db = sqlite3.connect(tmp_path / "src.db")
    db.execute("CREATE TABLE t (a INTEGER)")
    db.commit()
    db.close()
    s = stub(server)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("SELECT * FROM t WHERE a = :x", {"x": {"secret": "value"}}),
        ("SELECT * FROM t WHERE a = :x", {"x": ["secret"]}),
        ("SELECT abs(-9223372036854775807 - 1) AS a", {}),  # fails while reading
        ("SELECT * FROM missing_table", {}),
        ("SELECT a FROM t WHERE a = :x", {}),
        ("SELECT nonsense(", {}),
    ]
    for query, params in cases:
        spec = text(source={"sql": {"connection": "src", "query": query}})
        request = pb.ValidatePipelineRequest(spec_text=spec, preview_rows=5)
        if params:
            request.params.CopyFrom(to_struct(json.loads(json.dumps(params), parse_int=float)))
        answer = await s.ValidatePipeline(request)
        assert not answer.valid, query
        [problem] = answer.problems
        assert problem.field == "source"
        assert not any(word in problem.description for word in INTERNALS), problem.description


# ---- tenancy ---------------------------------------------------------------------------------


async def test_pipelines_runs_and_rejects_belong_to_their_tenant(
    tmp_path: Path, database_url: str
) -> None:
    keys = [
        api_key_config(API_KEY, "alice", "acme", ["user"]),
        api_key_config(OTHER_KEY, "olaf", "other", ["user"]),
    ]
    settings = make_settings(
        tmp_path, database_url, **overrides(tmp_path, **{"auth.api_keys": keys})
    )
    (tmp_path / "files" / "in.csv").write_text("id,n\n1,1\n2,x\n3,3\n")
    spec = {
        "name": "shared-name",
        "source": {"csv": {"path": "in.csv"}},
        "transforms": [{"cast": {"n": "integer"}}],
        "destination": {"jsonl": {"path": "out.jsonl"}},
    }
    a, b = apikey(), apikey(OTHER_KEY)
    async with running_server(settings) as srv:
        s = stub(srv)
        run = await run_to_end(s, spec, metadata=a, request_id="same-request")
        assert run.state == S.RUN_STATE_SUCCEEDED and run.rows_rejected == 1
        pipeline = (
            await s.GetPipeline(pb.GetPipelineRequest(id="shared-name"), metadata=a)
        ).pipeline
        not_found: list[tuple[Any, Any]] = [
            (s.GetPipeline, pb.GetPipelineRequest(id=pipeline.id)),
            (s.GetPipeline, pb.GetPipelineRequest(id="shared-name")),
            (
                s.UpdatePipeline,
                pb.UpdatePipelineRequest(id=pipeline.id, spec_text=json.dumps(spec)),
            ),
            (s.DeletePipeline, pb.DeletePipelineRequest(id=pipeline.id)),
            (s.RunPipeline, pb.RunPipelineRequest(id=pipeline.id)),
            (s.GetRun, pb.GetRunRequest(id=run.id, reject_limit=10)),
            (s.CancelRun, pb.CancelRunRequest(id=run.id)),
            (s.ListRuns, pb.ListRunsRequest(pipeline=pipeline.id)),
        ]
        for method, request in not_found:
            with pytest.raises(grpc.RpcError) as info:
                await method(request, metadata=b)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, method
        with pytest.raises(grpc.RpcError) as info:
            async for _ in s.WatchRun(pb.WatchRunRequest(id=run.id), metadata=b):
                pass
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await s.ListPipelines(pb.ListPipelinesRequest(), metadata=b)).pipelines == []
        assert (await s.ListRuns(pb.ListRunsRequest(), metadata=b)).runs == []
        # The other tenant's pipeline of the same name, and the same request
        # id, are its own: a run of its own, not a duplicate of acme's.
        theirs = await run_to_end(s, spec, metadata=b, request_id="same-request")
        assert theirs.state == S.RUN_STATE_SUCCEEDED and theirs.id != run.id
        again = await s.RunPipeline(
            pb.RunPipelineRequest(id="shared-name", request_id="same-request"), metadata=a
        )
        assert again.duplicate and again.run.id == run.id
        for md, mine in ((a, run), (b, theirs)):
            runs = (await s.ListRuns(pb.ListRunsRequest(), metadata=md)).runs
            assert [r.id for r in runs] == [mine.id]
            got = await s.GetRun(pb.GetRunRequest(id=mine.id, reject_limit=10), metadata=md)
            assert [from_value(r.row.fields["n"]) for r in got.rejects] == ["x"]
            assert got.run.tenant == ("acme" if md is a else "other")
        # Deleting one tenant's pipeline leaves the other's whole.
        await s.DeletePipeline(pb.DeletePipelineRequest(id="shared-name"), metadata=b)
        assert (await s.GetRun(pb.GetRunRequest(id=run.id), metadata=a)).run.id == run.id
        with pytest.raises(grpc.RpcError) as info:
            await s.GetRun(pb.GetRunRequest(id=theirs.id), metadata=b)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unexpected_failure_reads_an_error_id_never_internals(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A fault nobody planned for (a bug, a library raising something odd)
    fails the run with INTERNAL and an error id; the class name and the
    text (which may carry paths or SQL) go to the log under that id only."""
    from datamcp.adapters.pipelines.csv import CsvSource

    def broken(self: CsvSource) -> list[str]:
        raise KeyError("/srv/secret/path SELECT * FROM credentials")

    monkeypatch.setattr(CsvSource, "_open", broken)
    (tmp_path / "files" / "in.csv").write_text("a\n1\n")
    spec = {
        "name": "faulty",
        "source": {"csv": {"path": "in.csv"}},
        "destination": {"jsonl": {"path": "out.jsonl"}},
    }
    with caplog.at_level("ERROR", logger="datamcp.core.pipelines.runs"):
        run = await run_to_end(stub(server), spec)
    assert run.state == S.RUN_STATE_FAILED
    assert run.error.reason == "INTERNAL"
    assert run.error.message.startswith("the run failed unexpectedly (error id ")
    assert not any(w in run.error.message for w in (*INTERNALS, "KeyError", "/srv"))
    error_id = run.error.message.rsplit(" ", 1)[-1].rstrip(")")
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None
