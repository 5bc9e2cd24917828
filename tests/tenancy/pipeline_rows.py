"""Tenant matrix rows of PipelineService: pipelines, runs, rejects, stream jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

from datamcp.entrypoints.grpc.values import to_struct
from datamcp.v1 import pipelines_pb2, streams_pb2
from tests.streams_client import job_spec
from tests.tenancy.probes import (
    DATA_ROOTS,
    NOT_FOUND,
    Row,
    answers,
    not_found,
    status,
)
from tests.tenancy.world import (
    PIPELINE_SPEC,
    SHARED_JOB,
    SHARED_PIPE,
    SHARED_REQUEST,
    SINK_TABLE,
    World,
)

# --- pipelines, runs, rejects, stream jobs -------------------------------------------

P, ST = pipelines_pb2, streams_pb2


def _spec(name: str, tenant: str = "globex") -> str:
    return PIPELINE_SPEC.format(name=name, tenant=tenant)


async def _globex_pipeline(w: World, name: str = "globex-pipe") -> P.Pipeline:
    (w.tmp / "files" / "globex" / "in.csv").write_text("id,v\n7,globex\n")
    try:
        made = await w.b.pipelines.CreatePipeline(P.CreatePipelineRequest(spec_text=_spec(name)))
        return made.pipeline
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        return (await w.b.pipelines.GetPipeline(P.GetPipelineRequest(id=name))).pipeline


async def _create_same_name(w: World) -> list[Message]:
    mine = await _globex_pipeline(w, SHARED_PIPE)
    assert mine.id != w.ids["pipeline"] and mine.tenant == "globex"
    by_name = await w.b.pipelines.GetPipeline(P.GetPipelineRequest(id=SHARED_PIPE))
    theirs = await w.a.pipelines.GetPipeline(P.GetPipelineRequest(id=SHARED_PIPE))
    assert by_name.pipeline.id == mine.id and theirs.pipeline.id == w.ids["pipeline"]
    return [by_name]


async def _run_with_acme_request_id(w: World) -> list[Message]:
    mine = await _globex_pipeline(w)
    started = await w.b.pipelines.RunPipeline(
        P.RunPipelineRequest(id=mine.id, request_id=SHARED_REQUEST)
    )
    assert not started.duplicate and started.run.id != w.ids["run"]
    final = [m async for m in w.b.pipelines.WatchRun(P.WatchRunRequest(id=started.run.id))]
    assert final[-1].run.state == P.RUN_STATE_SUCCEEDED, final[-1].run.error
    return [started, *final]


async def _preview_acme_events(w: World) -> list[Message]:
    spec = (
        "source:\n  events: {types: [acme.created]}\n"
        "destination:\n  jsonl: {path: globex/x.jsonl}\n"
    )
    checked = await w.b.pipelines.ValidatePipeline(
        P.ValidatePipelineRequest(spec_text=spec, preview_rows=100)
    )
    assert checked.valid and not checked.preview_rows, checked
    return [checked]


async def _read_acme_file(w: World) -> list[Message]:
    spec = "source:\n  csv: {path: acme/in.csv}\ndestination:\n  jsonl: {path: globex/y.jsonl}\n"
    checked = await w.b.pipelines.ValidatePipeline(
        P.ValidatePipelineRequest(spec_text=spec, preview_rows=100)
    )
    return [checked]


async def _write_acme_file(w: World) -> list[Message]:
    spec = (
        "name: globex-writer\nsource:\n  csv: {path: globex/in.csv}\n"
        "destination:\n  jsonl: {path: acme/out.jsonl}\n"
    )
    (w.tmp / "files" / "globex" / "in.csv").write_text("id,v\n7,globex\n")
    try:
        made = await w.b.pipelines.CreatePipeline(P.CreatePipelineRequest(spec_text=spec))
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
        return []
    started = await w.b.pipelines.RunPipeline(P.RunPipelineRequest(id=made.pipeline.id))
    [m async for m in w.b.pipelines.WatchRun(P.WatchRunRequest(id=started.run.id))]
    return []


async def _job_same_name_and_request(w: World) -> list[Message]:
    made = await w.b.pipelines.CreateStreamJob(
        ST.CreateStreamJobRequest(
            job=ST.StreamJob(name=SHARED_JOB, spec=job_spec(size=10)), request_id=SHARED_REQUEST
        )
    )
    assert not made.duplicate and made.job.id != w.ids["job"]
    listed = await w.b.pipelines.ListStreamJobs(ST.ListStreamJobsRequest())
    return [made, listed]


async def _job_into_acme_table(w: World) -> list[Message]:
    """globex's job naming acme's sink table: refused, or at least none of its
    rows ever lands there (checked by the snapshot)."""
    try:
        made = await w.b.pipelines.CreateStreamJob(
            ST.CreateStreamJobRequest(
                job=ST.StreamJob(name="globex-sink", spec=job_spec(size=10, table=SINK_TABLE))
            )
        )
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
        return []
    job_id = made.job.id

    async def pushes() -> AsyncIterator[ST.PushRecordsRequest]:
        records = [{"k": "g", "t": 1, "v": 1}, {"k": "g", "t": 30, "v": 1}]
        yield ST.PushRecordsRequest(job_id=job_id, records=[to_struct(r) for r in records])

    await w.b.pipelines.PushRecords(pushes())
    async with asyncio.timeout(20):
        while True:
            got = await w.b.pipelines.GetStreamJob(ST.GetStreamJobRequest(id=job_id))
            if got.job.counters.windows_emitted:
                break
            await asyncio.sleep(0.05)
    return [made]


async def _job_over_acme_events(w: World) -> list[Message]:
    source = ST.StreamEventSource(types=["acme.created", "acme.dead"], from_earliest=True)
    made = await w.b.pipelines.CreateStreamJob(
        ST.CreateStreamJobRequest(
            job=ST.StreamJob(name="globex-bus", spec=job_spec(size=10, events=source))
        )
    )
    await asyncio.sleep(1.0)
    got = await w.b.pipelines.GetStreamJob(ST.GetStreamJobRequest(id=made.job.id))
    c = got.job.counters
    assert (c.inputs_consumed, c.records_accepted, c.records_rejected) == (0, 0, 0), c
    return [made, got]


async def _push_to_acme_job(w: World) -> list[Message]:
    async def pushes() -> AsyncIterator[ST.PushRecordsRequest]:
        yield ST.PushRecordsRequest(
            job_id=w.ids["job"], records=[to_struct({"k": "g", "t": 2, "v": 1})]
        )

    assert await status(w.b.pipelines.PushRecords(pushes())) == NOT_FOUND
    await asyncio.sleep(0.5)  # a leaked push would reach acme's counters by now
    return []


PIPELINE_ROWS = [
    Row("PipelineService/CreatePipeline", ("pipelines",), "acme's pipeline name",
        _create_same_name),
    Row("PipelineService/GetPipeline", ("pipelines",), "acme's pipeline id",
        not_found(lambda w: w.b.pipelines.GetPipeline(P.GetPipelineRequest(id=w.ids["pipeline"])))),
    Row("PipelineService/ListPipelines", ("pipelines",), "all and acme's page token",
        answers(
            lambda w: w.b.pipelines.ListPipelines(P.ListPipelinesRequest()),
            lambda w: w.b.pipelines.ListPipelines(
                P.ListPipelinesRequest(page_token=w.tokens["ListPipelines"])
            ),
        )),
    Row("PipelineService/UpdatePipeline", ("pipelines",), "acme's pipeline id",
        not_found(
            lambda w: w.b.pipelines.UpdatePipeline(
                P.UpdatePipelineRequest(
                    id=w.ids["pipeline"], spec_text=_spec(SHARED_PIPE), expected_version=1
                )
            )
        )),
    Row("PipelineService/DeletePipeline", ("pipelines",), "acme's pipeline id",
        not_found(
            lambda w: w.b.pipelines.DeletePipeline(P.DeletePipelineRequest(id=w.ids["pipeline"]))
        )),
    Row("PipelineService/ValidatePipeline", ("events",), "a preview of acme's event types",
        _preview_acme_events),
    Row("PipelineService/ValidatePipeline", ("pipelines",), "a preview of acme's input file",
        _read_acme_file, DATA_ROOTS),
    Row("PipelineService/RunPipeline", ("pipelines", "runs"), "acme's pipeline id",
        not_found(lambda w: w.b.pipelines.RunPipeline(P.RunPipelineRequest(id=w.ids["pipeline"])))),
    Row("PipelineService/RunPipeline", ("runs",), "acme's request_id",
        _run_with_acme_request_id),
    Row("PipelineService/RunPipeline", ("pipelines", "runs"), "a destination acme writes",
        _write_acme_file, DATA_ROOTS),
    Row("PipelineService/GetRun", ("runs", "rejects"), "acme's run with its rejects",
        not_found(
            lambda w: w.b.pipelines.GetRun(P.GetRunRequest(id=w.ids["run"], reject_limit=100))
        )),
    Row("PipelineService/ListRuns", ("runs",), "all and acme's page token",
        answers(
            lambda w: w.b.pipelines.ListRuns(P.ListRunsRequest()),
            lambda w: w.b.pipelines.ListRuns(P.ListRunsRequest(page_token=w.tokens["ListRuns"])),
        )),
    Row("PipelineService/ListRuns", ("runs",), "acme's pipeline",
        not_found(lambda w: w.b.pipelines.ListRuns(P.ListRunsRequest(pipeline=w.ids["pipeline"])))),
    Row("PipelineService/CancelRun", ("runs",), "acme's run",
        not_found(lambda w: w.b.pipelines.CancelRun(P.CancelRunRequest(id=w.ids["run"])))),
    Row("PipelineService/WatchRun", ("runs",), "acme's run",
        not_found(lambda w: w.b.pipelines.WatchRun(P.WatchRunRequest(id=w.ids["run"])))),
    Row("PipelineService/CreateStreamJob", ("stream jobs",), "acme's job name and request_id",
        _job_same_name_and_request),
    Row("PipelineService/CreateStreamJob", ("stream jobs",), "acme's sink table",
        _job_into_acme_table),
    Row("PipelineService/CreateStreamJob", ("stream jobs", "events"),
        "a job over acme's event types from the earliest", _job_over_acme_events),
    Row("PipelineService/GetStreamJob", ("stream jobs",), "acme's job id",
        not_found(lambda w: w.b.pipelines.GetStreamJob(ST.GetStreamJobRequest(id=w.ids["job"])))),
    Row("PipelineService/ListStreamJobs", ("stream jobs",), "all and acme's page token",
        answers(
            lambda w: w.b.pipelines.ListStreamJobs(ST.ListStreamJobsRequest()),
            lambda w: w.b.pipelines.ListStreamJobs(
                ST.ListStreamJobsRequest(page_token=w.tokens["ListStreamJobs"])
            ),
        )),
    Row("PipelineService/DeleteStreamJob", ("stream jobs",), "acme's job id",
        not_found(
            lambda w: w.b.pipelines.DeleteStreamJob(ST.DeleteStreamJobRequest(id=w.ids["job"]))
        )),
    Row("PipelineService/PushRecords", ("stream jobs",), "acme's job id", _push_to_acme_job),
]  # fmt: skip

# Rows known to leak on main run last: what they leak (globex's task answered
# by acme's agent) must not show up in the answers other rows check.
