"""Pipeline sources and destinations beyond local files, through the real
server: an HTTP JSON API (pagination, auth, allow-list, retries), S3 (moto),
the event bus, PostgreSQL tables; cron schedules across replicas, spec event
triggers, and run-level retries of transient errors."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from aiohttp import web

from datamcp.entrypoints.grpc.values import from_struct, from_value, to_value
from datamcp.v1 import events_pb2, events_pb2_grpc, pipelines_pb2_grpc
from datamcp.v1 import pipelines_pb2 as pb
from tests.aws.conftest import REGION, moto_endpoint, moto_server  # noqa: F401 (fixtures)
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
TOKEN = "Bearer pipeline-secret"
OTHER_KEY = "other-tenant-key-0123456789abcdef"
ITEMS = [{"id": i, "name": f"item-{i}"} for i in range(1, 8)]  # 7 records


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'datamcp.db'}"


def overrides(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data = tmp_path / "files"
    data.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "rate_limit.enabled": False,
        "pipelines.data_roots": [str(data)],
        "pipelines.sql_connections": {"out": f"sqlite:///{tmp_path / 'out.db'}"},
        "pipelines.progress_interval": 0.05,
        "pipelines.retry_base_delay": 0.01,
    }
    values.update(extra)
    return values


def stub(server: RunningServer) -> pipelines_pb2_grpc.PipelineServiceStub:
    return pipelines_pb2_grpc.PipelineServiceStub(server.channel())


async def run_to_end(
    s: pipelines_pb2_grpc.PipelineServiceStub, name: str, spec: dict[str, Any]
) -> pb.Run:
    await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
    run = (await s.RunPipeline(pb.RunPipelineRequest(id=name))).run
    final = run
    async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), timeout=30):
        final = msg.run
    got: pb.Run = (await s.GetRun(pb.GetRunRequest(id=run.id))).run
    assert got.state == final.state
    return got


def jsonl(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    text = (tmp_path / "files" / name).read_text()
    return [json.loads(line) for line in text.splitlines()]


# ---- an upstream HTTP JSON API -----------------------------------------------------


class Api:
    """A local JSON API with page, offset and cursor pagination that wants a
    bearer token, plus routes that fail on request."""

    def __init__(self) -> None:
        self.hits: list[tuple[float, str, dict[str, str]]] = []
        self.failures = 0  # how many /api/flaky requests answer 503 first
        self.retry_after: str | None = None
        self.base = ""
        app = web.Application()
        app.router.add_get("/api/paged", self.paged)
        app.router.add_get("/api/offset", self.offset)
        app.router.add_get("/api/cursor", self.cursor)
        app.router.add_get("/api/flaky", self.flaky)
        app.router.add_get("/api/missing", self.missing)
        app.router.add_route("*", "/{tail:.*}", self.elsewhere)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}/api"

    def _hit(self, request: web.Request) -> web.Response | None:
        self.hits.append((time.monotonic(), request.path, dict(request.query)))
        if request.headers.get("Authorization") != TOKEN:
            return web.Response(status=401, text="who are you")
        return None

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.hits]

    async def paged(self, request: web.Request) -> web.Response:
        denied = self._hit(request)
        if denied:
            return denied
        page, size = int(request.query["page"]), int(request.query["per_page"])
        return web.json_response({"data": {"items": ITEMS[(page - 1) * size : page * size]}})

    async def offset(self, request: web.Request) -> web.Response:
        denied = self._hit(request)
        if denied:
            return denied
        start, size = int(request.query["offset"]), int(request.query["limit"])
        return web.json_response(ITEMS[start : start + size])

    async def cursor(self, request: web.Request) -> web.Response:
        denied = self._hit(request)
        if denied:
            return denied
        start = int(request.query.get("after", "0"))
        chunk = ITEMS[start : start + 3]
        nxt = str(start + 3) if start + 3 < len(ITEMS) else None
        return web.json_response({"results": chunk, "meta": {"next": nxt}})

    async def flaky(self, request: web.Request) -> web.Response:
        denied = self._hit(request)
        if denied:
            return denied
        if self.failures > 0:
            self.failures -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=503, text="try later", headers=headers)
        return web.json_response(ITEMS[:2])

    async def missing(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=404, text="no such thing")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=200, text="outside the API")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    server = Api()
    await server.start()
    try:
        yield server
    finally:
        await server.runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_config(api: Api, **extra: Any) -> dict[str, Any]:
    return {
        # Nothing listens there: connections are refused.
        "down": {
            "base_url": f"http://127.0.0.1:{closed_port()}/api",
            "rate": 0,
            "max_attempts": 2,
            "failure_threshold": 100,
        },
        "shop": {"base_url": api.base, "headers": {"Authorization": TOKEN}, "rate": 0, **extra},
        # Same server, no credentials configured: the API answers 401.
        "anon": {"base_url": api.base, "rate": 0, "max_attempts": 1},
        # One attempt per page: transient errors surface to the run.
        "fragile": {
            "base_url": api.base,
            "headers": {"Authorization": TOKEN},
            "rate": 0,
            "max_attempts": 1,
            "failure_threshold": 100,
        },
    }


@pytest.fixture
async def http_server(api: Api, tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(
        tmp_path,
        sqlite_url(tmp_path),
        **overrides(tmp_path, **{"pipelines.http_apis": api_config(api)}),
    )
    async with running_server(settings) as s:
        yield s


def http_spec(name: str, api: str, path: str, **source: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"http": {"api": api, "path": path, **source}},
        "destination": {"jsonl": {"path": f"{name}.jsonl"}},
    }


async def test_http_source_page_offset_and_cursor_pagination_with_auth(
    http_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    s = stub(http_server)
    page = http_spec(
        "paged",
        "shop",
        "paged",
        records="data.items",
        pagination={"type": "page", "size_param": "per_page", "page_size": 3},
    )
    offset = http_spec(
        "offset",
        "shop",
        "offset",
        pagination={"type": "offset", "size_param": "limit", "page_size": 3},
    )
    cursor = http_spec(
        "cursor",
        "shop",
        "cursor",
        records="results",
        pagination={"type": "cursor", "param": "after", "cursor_path": "meta.next"},
    )
    unsized = http_spec(
        "unsized", "shop", "paged", records="data.items", pagination={"type": "page"}
    )
    unsized["source"]["http"]["query"] = {"per_page": "4"}
    for spec in (page, offset, cursor, unsized):
        run = await run_to_end(s, spec["name"], spec)
        assert run.state == S.RUN_STATE_SUCCEEDED, run.error
        assert (run.rows_read, run.rows_written) == (7, 7)
        assert jsonl(tmp_path, f"{spec['name']}.jsonl") == ITEMS
    queries = {p: [q for _, path, q in api.hits if path == p] for p in set(api.paths())}
    assert queries["/api/paged"] == [{"page": str(n), "per_page": "3"} for n in (1, 2, 3)] + [
        {"per_page": "4", "page": str(n)}
        for n in (1, 2, 3)  # stops at an empty page
    ]
    assert queries["/api/offset"] == [{"offset": str(n), "limit": "3"} for n in (0, 3, 6)]
    assert queries["/api/cursor"] == [{}, {"after": "3"}, {"after": "6"}]


async def test_http_source_allow_list_and_missing_credentials(
    http_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    s = stub(http_server)
    # An API that is not configured cannot be named.
    with pytest.raises(grpc.RpcError) as info:
        await s.CreatePipeline(
            pb.CreatePipelineRequest(spec_text=json.dumps(http_spec("x", "evil", "items")))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {
        v.field: v.description for v in rich_details(info.value)["BadRequest"].field_violations
    }
    assert "unknown API 'evil'" in fields["source.http.api"]
    # Paths cannot leave the configured base URL.
    for n, path in enumerate(["../elsewhere", "http://127.0.0.1:1/x", "//evil.example/x"]):
        run = await run_to_end(s, f"escape-{n}", http_spec(f"escape-{n}", "shop", path))
        assert run.state == S.RUN_STATE_FAILED
        assert run.error.reason == "SOURCE_ERROR" and "not allowed" in run.error.message
        assert run.attempts == 1
    assert api.hits == []
    # Without the configured header the API refuses: a permanent error, no retry.
    run = await run_to_end(s, "anon", http_spec("anon", "anon", "offset"))
    assert run.state == S.RUN_STATE_FAILED
    assert run.error.reason == "HTTP_401" and run.attempts == 1
    assert api.paths() == ["/api/offset"]


async def test_http_source_retries_503_honouring_retry_after(
    http_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    api.failures, api.retry_after = 1, "1"
    s = stub(http_server)
    run = await run_to_end(s, "flaky", http_spec("flaky", "shop", "flaky"))
    assert run.state == S.RUN_STATE_SUCCEEDED, run.error
    # Retried inside the resilience layer: one run attempt, two requests,
    # the second no sooner than the Retry-After said.
    assert run.attempts == 1 and run.rows_written == 2
    times = [t for t, p, _ in api.hits if p == "/api/flaky"]
    assert len(times) == 2 and times[1] - times[0] >= 0.9
    assert jsonl(tmp_path, "flaky.jsonl") == ITEMS[:2]


async def test_transient_source_errors_retry_the_run_permanent_ones_do_not(
    http_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    s = stub(http_server)
    api.failures = 2  # fragile: one request per attempt, max_retries = 2
    run = await run_to_end(s, "fragile", http_spec("fragile", "fragile", "flaky"))
    assert run.state == S.RUN_STATE_SUCCEEDED, run.error
    assert run.attempts == 3 and run.rows_written == 2
    assert jsonl(tmp_path, "fragile.jsonl") == ITEMS[:2]
    # Three failures: the retries run out.
    api.failures = 3
    spec = http_spec("fragile2", "fragile", "flaky")
    run = await run_to_end(s, "fragile2", spec)
    assert run.state == S.RUN_STATE_FAILED
    assert run.error.reason == "TRANSIENT_ERROR" and run.attempts == 3
    assert not (tmp_path / "files" / "fragile2.jsonl").exists()
    # Connection refused: retried by the guard, then by the run, then FAILED.
    run = await run_to_end(s, "down", http_spec("down", "down", "offset"))
    assert run.state == S.RUN_STATE_FAILED
    assert run.error.reason == "TRANSIENT_ERROR" and run.attempts == 3
    assert "connection failed" in run.error.message
    # A 404 is permanent: one attempt, one request.
    before = len(api.hits)
    run = await run_to_end(s, "missing", http_spec("missing", "fragile", "missing"))
    assert run.state == S.RUN_STATE_FAILED
    assert run.error.reason == "HTTP_404" and run.attempts == 1
    assert len(api.hits) == before + 1


# ---- S3 ---------------------------------------------------------------------------


async def test_s3_source_to_s3_destination(moto_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    async with aioboto3.Session().client(
        "s3", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        await client.create_bucket(Bucket="lake")
        await client.put_object(
            Bucket="lake", Key="in/orders.csv", Body=b"id,amount\n1,2.5\n2,x\n3,4\n"
        )
        settings = make_settings(
            tmp_path,
            sqlite_url(tmp_path),
            **overrides(tmp_path, **{"pipelines.s3_endpoint_url": moto_endpoint}),
        )
        spec = {
            "name": "s3copy",
            "source": {"s3": {"bucket": "lake", "key": "in/orders.csv"}},
            "transforms": [{"cast": {"id": "integer", "amount": "float"}}],
            "destination": {"s3": {"bucket": "lake", "key": "out/orders.jsonl"}},
        }
        async with running_server(settings) as srv:
            s = stub(srv)
            run = await run_to_end(s, "s3copy", spec)
            assert run.state == S.RUN_STATE_SUCCEEDED, run.error
            assert (run.rows_read, run.rows_written, run.rows_rejected) == (3, 2, 1)
            obj = await client.get_object(Bucket="lake", Key="out/orders.jsonl")
            body = (await obj["Body"].read()).decode()
            assert [json.loads(x) for x in body.splitlines()] == [
                {"id": 1, "amount": 2.5},
                {"id": 3, "amount": 4.0},
            ]
            # A missing object and a missing bucket fail the run, unretried.
            missing = {**spec, "name": "nokey", "source": {"s3": {"bucket": "lake", "key": "no"}}}
            run = await run_to_end(s, "nokey", missing)
            assert run.state == S.RUN_STATE_FAILED and run.attempts == 1
            assert run.error.reason == "S3_ERROR"
            nobucket = {
                **spec,
                "name": "nobucket",
                "destination": {"s3": {"bucket": "absent", "key": "x.csv"}},
            }
            run = await run_to_end(s, "nobucket", nobucket)
            assert run.state == S.RUN_STATE_FAILED and run.attempts == 1
            assert run.error.reason == "S3_ERROR", run.error
            # JSON Lines in, CSV out (format from the key's extension).
            await client.put_object(
                Bucket="lake", Key="in/users.ndjson", Body=b'{"id": 1, "n": "a"}\nnot json\n'
            )
            back = {
                "name": "s3back",
                "source": {"s3": {"bucket": "lake", "key": "in/users.ndjson"}},
                "destination": {"s3": {"bucket": "lake", "key": "out/users.csv"}},
            }
            run = await run_to_end(s, "s3back", back)
            assert run.state == S.RUN_STATE_SUCCEEDED, run.error
            assert (run.rows_read, run.rows_written, run.rows_rejected) == (2, 1, 1)
            obj = await client.get_object(Bucket="lake", Key="out/users.csv")
            assert (await obj["Body"].read()).decode().splitlines() == ["id,n", "1,a"]
            listed = await client.list_objects_v2(Bucket="lake")
            assert sorted(o["Key"] for o in listed["Contents"]) == [
                "in/orders.csv",
                "in/users.ndjson",
                "out/orders.jsonl",
                "out/users.csv",
            ]


# ---- schedules and triggers ----------------------------------------------------------


async def test_cron_schedule_fires_once_per_slot_across_two_replicas(
    tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "in.csv").write_text("a\n1\n2\n")
    extra = overrides(tmp_path, **{"pipelines.schedule_tick": 0.05})
    spec = {
        "name": "every-second",
        "source": {"csv": {"path": "in.csv"}},
        "destination": {"table": {"connection": "out", "table": "ticks", "mode": "append"}},
        "schedule": "* * * * * *",
    }
    async with (
        running_server(make_settings(tmp_path / "a", database_url, **extra)) as one,
        running_server(make_settings(tmp_path / "b", database_url, **extra)) as two,
    ):
        s = stub(one)
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))
        async with asyncio.timeout(20):
            while True:
                runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="every-second"))).runs
                done = [r for r in runs if r.state == S.RUN_STATE_SUCCEEDED]
                if len(done) >= 3:
                    break
                await asyncio.sleep(0.1)
        await s.UpdatePipeline(
            pb.UpdatePipelineRequest(
                id="every-second", spec_text=json.dumps({**spec, "schedule": ""})
            )
        )
        async with asyncio.timeout(20):  # let unfinished runs end
            while True:
                runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="every-second"))).runs
                if all(r.state in (S.RUN_STATE_SUCCEEDED, S.RUN_STATE_FAILED) for r in runs):
                    break
                await asyncio.sleep(0.1)
        seen_by_two = (await stub(two).ListRuns(pb.ListRunsRequest(pipeline="every-second"))).runs
        assert {r.id for r in seen_by_two} == {r.id for r in runs}
    assert all(r.trigger == "schedule" for r in runs)
    assert all(r.state == S.RUN_STATE_SUCCEEDED for r in runs), [r.error for r in runs]
    slots = [r.request_id for r in runs]
    assert len(slots) == len(set(slots)) >= 3
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        count = db.execute("SELECT count(*) FROM ticks").fetchone()[0]
    finally:
        db.close()
    assert count == 2 * len(runs)


async def test_spec_event_trigger_runs_pipeline_once_per_event(
    tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "in.csv").write_text("a\n1\n")
    spec = {
        "name": "on-upload",
        "source": {"csv": {"path": "in.csv"}},
        "transforms": [{"derive": {"column": "file", "expr": "$event.name"}}],
        "destination": {"table": {"connection": "out", "table": "uploads", "mode": "append"}},
        "triggers": [{"types": ["file.uploaded"]}],
        "params": {"event": {}},
    }
    settings = make_settings(tmp_path, database_url, **overrides(tmp_path))
    async with running_server(settings) as srv:
        s = stub(srv)
        ev = events_pb2_grpc.EventServiceStub(srv.channel())
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)))

        async def publish(event_id: str, type_: str, name: str) -> None:
            await ev.Publish(
                events_pb2.PublishRequest(
                    event=events_pb2.CloudEvent(
                        type=type_, source="/t", id=event_id, data=to_value({"name": name})
                    )
                )
            )

        await publish("e1", "file.uploaded", "f1")
        await publish("e1", "file.uploaded", "f1")  # a duplicate of the same event
        await publish("e2", "file.deleted", "f2")  # not a trigger
        await publish("e3", "file.uploaded", "f3")
        async with asyncio.timeout(20):
            while True:
                runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="on-upload"))).runs
                done = [r for r in runs if r.state == S.RUN_STATE_SUCCEEDED]
                if len(done) >= 2:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        runs = (await s.ListRuns(pb.ListRunsRequest(pipeline="on-upload"))).runs
    assert len(runs) == 2 and all(r.trigger == "event" for r in runs)
    assert sorted(from_struct(r.params)["event"]["name"] for r in runs) == ["f1", "f3"]
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        files = sorted(r[0] for r in db.execute("SELECT file FROM uploads"))
    finally:
        db.close()
    assert files == ["f1", "f3"]


# ---- events from the bus --------------------------------------------------------------


async def test_events_source_reads_stored_events_incrementally(
    tmp_path: Path, database_url: str
) -> None:
    keys = [
        api_key_config(API_KEY, "alice", "acme", ["user"]),
        api_key_config(OTHER_KEY, "olaf", "other", ["user"]),
    ]
    settings = make_settings(
        tmp_path, database_url, **overrides(tmp_path, **{"auth.api_keys": keys})
    )
    spec = {
        "name": "orders-from-bus",
        "source": {"events": {"types": ["order.*"]}},
        "transforms": [
            {"derive": {"column": "amount", "expr": "data.amount"}},
            {"select": ["seq", "id", "type", "amount"]},
        ],
        "destination": {"jsonl": {"path": "orders.jsonl"}},
        "incremental": {"column": "seq"},
    }
    me = apikey()
    async with running_server(settings) as srv:
        s = stub(srv)
        ev = events_pb2_grpc.EventServiceStub(srv.channel())

        async def publish(event_id: str, type_: str, amount: int, key: str = API_KEY) -> None:
            await ev.Publish(
                events_pb2.PublishRequest(
                    event=events_pb2.CloudEvent(
                        type=type_, source="/shop", id=event_id, data=to_value({"amount": amount})
                    )
                ),
                metadata=apikey(key),
            )

        async def run() -> pb.Run:
            req = pb.RunPipelineRequest(id="orders-from-bus")
            r: pb.Run = (await s.RunPipeline(req, metadata=me)).run
            async for msg in s.WatchRun(pb.WatchRunRequest(id=r.id), timeout=30, metadata=me):
                r = msg.run
            return r

        await publish("o1", "order.placed", 10)
        await publish("x1", "user.created", 99)
        await publish("t1", "order.placed", 500, OTHER_KEY)  # another tenant's
        await publish("o2", "order.paid", 20)
        await s.CreatePipeline(pb.CreatePipelineRequest(spec_text=json.dumps(spec)), metadata=me)
        first_run = await run()
        assert first_run.state == S.RUN_STATE_SUCCEEDED, first_run.error
        first = jsonl(tmp_path, "orders.jsonl")
        assert [(r["id"], r["type"], r["amount"]) for r in first] == [
            ("o1", "order.placed", 10),
            ("o2", "order.paid", 20),
        ]
        assert from_value(first_run.cursor_end) == first[-1]["seq"]
        await publish("o3", "order.placed", 30)
        again = await run()
        assert again.state == S.RUN_STATE_SUCCEEDED, again.error
        assert again.rows_read == 1 and again.rows_written == 1
        assert [r["id"] for r in jsonl(tmp_path, "orders.jsonl")] == ["o3"]
        nothing = await run()
        assert nothing.state == S.RUN_STATE_SUCCEEDED and nothing.rows_read == 0
        assert from_value(nothing.cursor_end) == from_value(again.cursor_end)


# ---- PostgreSQL destination --------------------------------------------------------------


@pytest.mark.pg
async def test_postgres_table_destination_append_replace_merge(
    tmp_path: Path, pg_database: str
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    settings = make_settings(
        tmp_path,
        sqlite_url(tmp_path),
        **overrides(tmp_path, **{"pipelines.sql_connections": {"pg": pg_database}}),
    )

    def spec(name: str, mode: str, table: str, **dest: Any) -> dict[str, Any]:
        return {
            "name": name,
            "source": {"csv": {"path": "in.csv"}},
            "transforms": [{"cast": {"id": "integer", "amount": "float"}}],
            "destination": {"table": {"connection": "pg", "table": table, "mode": mode, **dest}},
        }

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(pg_database)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async with running_server(settings) as srv:
        s = stub(srv)
        (files / "in.csv").write_text("id,name,amount\n1,ann,1.5\n2,bob,2\n")
        for name, mode, table, dest in [
            ("app", "append", "appended", {}),
            ("rep", "replace", "replaced", {}),
            ("mer", "merge", "merged", {"keys": ["id"]}),
        ]:
            run = await run_to_end(s, name, spec(name, mode, table, **dest))
            assert run.state == S.RUN_STATE_SUCCEEDED, run.error
        (files / "in.csv").write_text("id,name,amount\n2,bobby,20\n3,cid,3\n")
        for name in ("app", "rep", "mer"):
            run = (await s.RunPipeline(pb.RunPipelineRequest(id=name))).run
            async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), timeout=30):
                run = msg.run
            assert run.state == S.RUN_STATE_SUCCEEDED, run.error
            assert run.rows_written == 2
        assert await rows("SELECT id, name, amount FROM appended ORDER BY id, name") == [
            (1, "ann", 1.5),
            (2, "bob", 2.0),
            (2, "bobby", 20.0),
            (3, "cid", 3.0),
        ]
        assert await rows("SELECT id, name, amount FROM replaced ORDER BY id") == [
            (2, "bobby", 20.0),
            (3, "cid", 3.0),
        ]
        assert await rows("SELECT id, name, amount FROM merged ORDER BY id") == [
            (1, "ann", 1.5),
            (2, "bobby", 20.0),
            (3, "cid", 3.0),
        ]
        # Merge with a key twice in one batch (the last row wins) and a new
        # column (the table evolves); append under freeze refuses it.
        (files / "in.csv").write_text("id,name,amount,note\n3,cee,30,n1\n4,dee,4,n2\n3,cyd,33,n3\n")
        run = (await s.RunPipeline(pb.RunPipelineRequest(id="mer"))).run
        async for msg in s.WatchRun(pb.WatchRunRequest(id=run.id), timeout=30):
            run = msg.run
        assert run.state == S.RUN_STATE_SUCCEEDED, run.error
        assert await rows("SELECT id, name, amount, note FROM merged ORDER BY id") == [
            (1, "ann", 1.5, None),
            (2, "bobby", 20.0, None),
            (3, "cyd", 33.0, "n3"),
            (4, "dee", 4.0, "n2"),
        ]
        frozen = spec("frz", "append", "appended", contract="freeze")
        run = await run_to_end(s, "frz", frozen)
        assert run.state == S.RUN_STATE_FAILED and run.error.reason == "SCHEMA_FROZEN"
        assert len(await rows("SELECT * FROM appended")) == 4
        # A failing run (bad rows past max_rejects) leaves a replace table as it was.
        bad = {**spec("rep2", "replace", "replaced"), "max_rejects": 1}
        (files / "in.csv").write_text("id,name,amount\n9,zed,x\n10,yan,y\n")
        run = await run_to_end(s, "rep2", bad)
        assert run.state == S.RUN_STATE_FAILED and run.error.reason == "TOO_MANY_REJECTS"
        assert await rows("SELECT id FROM replaced ORDER BY id") == [(2,), (3,)]
        leftovers = await rows(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        assert leftovers == [("appended",), ("merged",), ("replaced",)]
