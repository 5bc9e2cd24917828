"""The server of the tenant matrix and what tenant acme makes in it, through
the public API: two or more of every resource kind (so acme's listings have
a second page, whose token globex then replays)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from datamcp.config.settings import Settings
from datamcp.entrypoints.grpc.values import to_struct, to_value
from datamcp.v1 import agents_pb2, events_pb2, memory_pb2, pipelines_pb2, streams_pb2
from tests.agent_plugins import PLUGINS
from tests.conftest import fresh_pg_database
from tests.events_client import Subscriber, cloud_event
from tests.streams_client import job_spec
from tests.support import (
    API_KEY,
    api_key_config,
    apikey,
    auth_overrides,
    bearer,
    hs256_token,
    make_settings,
    running_server,
)
from tests.tenancy.snapshot import settle
from tests.tenancy.world import (
    A_CAPABILITY,
    A_SECRET,
    A_TENANT,
    B_TENANT,
    PIPELINE_SPEC,
    SHARED_JOB,
    SHARED_KEY,
    SHARED_NS,
    SHARED_PIPE,
    SHARED_REQUEST,
    SHARED_SUB,
    SINK_TABLE,
    Client,
    RemoteAgentClient,
    World,
    task_spec,
    wait_until,
)

A, E, M, P, ST = agents_pb2, events_pb2, memory_pb2, pipelines_pb2, streams_pb2


@contextlib.asynccontextmanager
async def database(backend: str, tmp: Path) -> AsyncIterator[str]:
    """The application database for one module: a SQLite file, or a fresh
    PostgreSQL database (dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'data' / 'datamcp.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


def settings_for(tmp: Path, database_url: str) -> Settings:
    files = tmp / "files"
    for tenant in (A_TENANT, B_TENANT):
        (files / tenant).mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = auth_overrides()
    overrides["auth.api_keys"] = [api_key_config(API_KEY, "gina", B_TENANT, ["user"])]
    overrides.update(
        {
            "rate_limit.enabled": False,
            "agents.plugins": [*PLUGINS, "tests.tenancy.world:HoldAgent"],
            "agents.heartbeat_interval": 1.0,
            "memory.stores": [
                {"id": "main", "url": database_url, "primary": True},
                {"id": "b", "url": f"sqlite:///{tmp / 'memory-b.db'}"},
            ],
            "memory.policies": [{"prefix": "manual", "strategy": "manual"}],
            "pipelines.data_roots": [str(files)],
            "pipelines.progress_interval": 0.05,
            "streams.poll_interval": 0.05,
        }
    )
    return make_settings(tmp, database_url, **overrides)


@contextlib.asynccontextmanager
async def built_world(tmp: Path, database_url: str) -> AsyncIterator[World]:
    async with running_server(settings_for(tmp, database_url)) as server:
        async with server.channel() as channel:
            a = Client(A_TENANT, bearer(hs256_token(sub="ann", tenant=A_TENANT)), channel)
            b = Client(B_TENANT, apikey(API_KEY), channel)
            async with RemoteAgentClient(
                a, "acme-agent", [A_CAPABILITY], answer={"from": A_SECRET}
            ) as agent:
                world = World(server, tmp, a, b, agent)
                await populate(world)
                yield world


async def populate(w: World) -> None:
    # Names globex reuses on purpose (shared-*, event ids, request ids, the
    # correlation id) are not markers; acme's tenant field, secret,
    # generated ids and acme-only names are.
    w.markers.update(
        {f'"{A_TENANT}"', A_SECRET, w.a_agent.agent_id, "acme-dead", "acme-subject"}
        | {"acme-tag", "acme-failure", "manual/acme", "acme-private"}
    )
    w.ids["agent"] = w.a_agent.agent_id
    await _events(w)
    await _agents(w)
    await _pipelines(w)
    await _stream_jobs(w)
    await _memory(w)
    skip = {"dead_seq", "event", "event_seqs", "correlation"}
    w.markers.update(v for k, v in w.ids.items() if k not in skip)
    await _page_tokens(w)
    await settle(w)


async def _events(w: World) -> None:
    """Events, the subscription shared-sub and acme-dead with two dead letters."""
    a, ids = w.a, w.ids
    published = await a.events.PublishBatch(
        E.PublishBatchRequest(
            events=[
                cloud_event("acme.created", "acme-subject", {"v": A_SECRET}, id_=f"evt-{i}")
                for i in range(3)
            ]
        )
    )
    ids["event"] = published.results[0].id
    ids["event_seqs"] = ",".join(str(r.sequence) for r in published.results)
    sub = Subscriber(a.channel, a.metadata)
    await sub.open(SHARED_SUB, ["acme.*"], earliest=True)
    sub.close()
    dead = Subscriber(a.channel, a.metadata)
    await dead.open("acme-dead", ["acme.dead"], earliest=True, max_attempts=1)
    for _ in range(2):
        await a.events.Publish(
            E.PublishRequest(event=cloud_event("acme.dead", data={"v": A_SECRET}))
        )
        delivery = await dead.next(10)
        ids["dead_seq"] = str(delivery.event.sequence)
        w.markers.add(delivery.event.id)
        await dead.nack(delivery.event.sequence, "acme-failure")

    async def buried() -> bool:
        page = await a.events.ListDeadLetters(E.ListDeadLettersRequest(subscription="acme-dead"))
        return len(page.dead_letters) == 2

    await wait_until(buried, "acme's dead letters")
    dead.close()


async def _agents(w: World) -> None:
    """Tasks (one held RUNNING), audit records, work for acme's remote agent."""
    a, ids = w.a, w.ids
    echo = await a.agents.SubmitTask(
        A.SubmitTaskRequest(task=task_spec("echo", A_SECRET, request_id=SHARED_REQUEST))
    )
    ids["task"] = echo.task.id
    hold = await a.agents.SubmitTask(
        A.SubmitTaskRequest(task=task_spec("tenancy.hold", A_SECRET, timeout=3600))
    )
    ids["running_task"] = hold.task.id
    for spec in (
        task_spec("test.call", {"target": "echo", "input": A_SECRET}),
        task_spec("test.call", {"target": "math.add", "input": {"a": 1, "b": 2}}),
        task_spec("memory.put", {"key": "agent-key", "value": A_SECRET}),
        task_spec(A_CAPABILITY, A_SECRET),
    ):
        done = await a.agents.ExecuteTask(A.ExecuteTaskRequest(task=spec), timeout=30)
        assert done.task.state == A.TASK_STATE_SUCCEEDED, done.task.error
        if spec.capability == "test.call":
            ids["correlation"] = done.task.correlation_id
    ids["remote_task"] = done.task.id
    audits = await a.agents.ListAuditRecords(A.ListAuditRecordsRequest())
    ids["audit"] = audits.records[0].id

    async def running() -> bool:
        got = await a.agents.GetTask(A.GetTaskRequest(id=ids["running_task"]))
        return got.task.state == A.TASK_STATE_RUNNING

    await wait_until(running, "acme's held task running")


async def _pipelines(w: World) -> None:
    """Two pipelines (shared-pipe, acme-private), a run of each with a reject."""
    a, ids = w.a, w.ids
    (w.tmp / "files" / A_TENANT / "in.csv").write_text(f"id,v\n1,{A_SECRET}\nx,{A_SECRET}\n")
    for name in ("acme-private", SHARED_PIPE):
        created = await a.pipelines.CreatePipeline(
            P.CreatePipelineRequest(spec_text=PIPELINE_SPEC.format(name=name, tenant=A_TENANT))
        )
        ids["pipeline"] = created.pipeline.id
        started = await a.pipelines.RunPipeline(
            P.RunPipelineRequest(id=name, request_id=f"{SHARED_REQUEST}-{name}")
        )
        ids["run"] = run_id = started.run.id

        async def run_done(run_id: str = run_id) -> bool:
            got = await a.pipelines.GetRun(P.GetRunRequest(id=run_id))
            return got.run.state == P.RUN_STATE_SUCCEEDED

        await wait_until(run_done, "acme's run")


async def _stream_jobs(w: World) -> None:
    """Two push jobs into acme's sink table, one window closed in the last."""
    a, ids = w.a, w.ids
    for name, request_id in (("acme-private", ""), (SHARED_JOB, SHARED_REQUEST)):
        job = await a.pipelines.CreateStreamJob(
            ST.CreateStreamJobRequest(
                job=ST.StreamJob(name=name, spec=job_spec(size=10, table=SINK_TABLE)),
                request_id=request_id,
            )
        )
        ids["job"] = job.job.id

    async def pushes() -> AsyncIterator[ST.PushRecordsRequest]:
        records = [{"k": A_SECRET, "t": 1, "v": 1}, {"k": A_SECRET, "t": 30, "v": 2}, {"t": 3}]
        yield ST.PushRecordsRequest(job_id=ids["job"], records=[to_struct(r) for r in records])

    await a.pipelines.PushRecords(pushes())

    async def job_settled() -> bool:
        got = await a.pipelines.GetStreamJob(ST.GetStreamJobRequest(id=ids["job"]))
        return got.job.counters.windows_emitted >= 1 and got.job.counters.records_rejected >= 1

    await wait_until(job_settled, "acme's stream job")


async def _memory(w: World) -> None:
    """A key with history, two manual conflicts from two sync runs."""
    a, ids = w.a, w.ids
    for value in ("first", A_SECRET):
        put = await a.memory.Put(
            M.PutRequest(
                namespace=SHARED_NS,
                key=SHARED_KEY,
                value=to_value(value),
                tags=["acme-tag"],
                metadata={"owner": A_TENANT},
            )
        )
    ids["version"] = put.record.version
    for key in ("c", "d"):
        main_side = to_value("main-side")
        await a.memory.Put(M.PutRequest(namespace="manual/acme", key=key, value=main_side))
        b_side = to_value(A_SECRET)
        await a.memory.Put(M.PutRequest(namespace="manual/acme", key=key, value=b_side, store="b"))
        run = await a.memory.Synchronize(M.SynchronizeRequest(), timeout=60)
        assert run.run.status == M.SYNC_RUN_STATUS_SUCCEEDED, run.run.error
        ids["sync"] = run.run.sync_id
    conflicts = await a.memory.ListConflicts(
        M.ListConflictsRequest(status=M.CONFLICT_STATUS_PENDING)
    )
    assert len(conflicts.conflicts) == 2
    ids["conflict"] = conflicts.conflicts[0].id
    ids["conflict_version"] = conflicts.conflicts[0].versions[0].version


async def _page_tokens(w: World) -> None:
    """acme's first page tokens (page_size 1): globex replays them."""
    a = w.a
    listings: dict[str, Any] = {
        "ListTasks": a.agents.ListTasks(A.ListTasksRequest(page_size=1)),
        "ListAuditRecords": a.agents.ListAuditRecords(A.ListAuditRecordsRequest(page_size=1)),
        "ListSubscriptions": a.events.ListSubscriptions(E.ListSubscriptionsRequest(page_size=1)),
        "ListDeadLetters": a.events.ListDeadLetters(
            E.ListDeadLettersRequest(subscription="acme-dead", page_size=1)
        ),
        "ListPipelines": a.pipelines.ListPipelines(P.ListPipelinesRequest(page_size=1)),
        "ListRuns": a.pipelines.ListRuns(P.ListRunsRequest(page_size=1)),
        "ListStreamJobs": a.pipelines.ListStreamJobs(ST.ListStreamJobsRequest(page_size=1)),
        "List": a.memory.List(M.ListRequest(page_size=1)),
        "Search": a.memory.Search(M.SearchRequest(page_size=1)),
        "ListSyncRuns": a.memory.ListSyncRuns(M.ListSyncRunsRequest(page_size=1)),
        "ListConflicts": a.memory.ListConflicts(M.ListConflictsRequest(page_size=1)),
    }
    for name, call in listings.items():
        token = (await call).next_page_token
        assert token, f"acme's {name} has one page: no token for globex to replay"
        w.tokens[name] = token
