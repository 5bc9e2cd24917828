"""datamcp.v1.PipelineService: batch RPCs here (translate, delegate to
core.pipelines, translate back); the stream-job RPCs come from
:class:`StreamJobMethods`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from datamcp.core.context import current_tenant
from datamcp.core.pipelines.model import RunState
from datamcp.core.pipelines.service import PipelineService as CorePipelineService
from datamcp.entrypoints.grpc.convert import enum_filter
from datamcp.entrypoints.grpc.pipeline_convert import (
    definition_from,
    pipeline_to_proto,
    reject_to_proto,
    run_to_proto,
    spec_to_proto,
)
from datamcp.entrypoints.grpc.stream_service import StreamJobMethods
from datamcp.entrypoints.grpc.values import from_struct, to_struct
from datamcp.v1 import pipelines_pb2 as pb
from datamcp.v1 import pipelines_pb2_grpc


class PipelineService(StreamJobMethods, pipelines_pb2_grpc.PipelineServiceServicer):
    def __init__(self, pipelines: CorePipelineService, streams: Any) -> None:
        self.pipelines = pipelines
        self.streams = streams

    async def CreatePipeline(
        self, request: pb.CreatePipelineRequest, context: aio.ServicerContext
    ) -> pb.CreatePipelineResponse:
        pipeline = await self.pipelines.create(
            current_tenant(), definition_from(request), request.name, request.description
        )
        return pb.CreatePipelineResponse(pipeline=pipeline_to_proto(pipeline))

    async def GetPipeline(
        self, request: pb.GetPipelineRequest, context: aio.ServicerContext
    ) -> pb.GetPipelineResponse:
        pipeline = await self.pipelines.get(current_tenant(), request.id)
        return pb.GetPipelineResponse(pipeline=pipeline_to_proto(pipeline))

    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, context: aio.ServicerContext
    ) -> pb.ListPipelinesResponse:
        items, token = await self.pipelines.list_pipelines(
            current_tenant(), request.page_size, request.page_token
        )
        return pb.ListPipelinesResponse(
            pipelines=[pipeline_to_proto(p) for p in items], next_page_token=token
        )

    async def UpdatePipeline(
        self, request: pb.UpdatePipelineRequest, context: aio.ServicerContext
    ) -> pb.UpdatePipelineResponse:
        pipeline = await self.pipelines.update(
            current_tenant(),
            request.id,
            definition_from(request),
            description=request.description,
            expected_version=request.expected_version,
        )
        return pb.UpdatePipelineResponse(pipeline=pipeline_to_proto(pipeline))

    async def DeletePipeline(
        self, request: pb.DeletePipelineRequest, context: aio.ServicerContext
    ) -> pb.DeletePipelineResponse:
        await self.pipelines.delete(current_tenant(), request.id)
        return pb.DeletePipelineResponse()

    async def ValidatePipeline(
        self, request: pb.ValidatePipelineRequest, context: aio.ServicerContext
    ) -> pb.ValidatePipelineResponse:
        result = await self.pipelines.validate(
            current_tenant(),
            definition_from(request),
            preview_rows=request.preview_rows,
            params=from_struct(request.params, "params") if request.HasField("params") else None,
        )
        out = pb.ValidatePipelineResponse(
            valid=not result.problems,
            problems=[
                pb.FieldProblem(field=p.field, description=p.description) for p in result.problems
            ],
            columns=result.columns or [],
            preview_rows=[to_struct(r) for r in result.rows or []],
            preview_rejects=[reject_to_proto(r) for r in result.rejects or []],
        )
        if result.spec is not None:
            out.spec.CopyFrom(spec_to_proto(result.spec))
        return out

    async def RunPipeline(
        self, request: pb.RunPipelineRequest, context: aio.ServicerContext
    ) -> pb.RunPipelineResponse:
        run, duplicate = await self.pipelines.run(
            current_tenant(),
            request.id,
            params=from_struct(request.params, "params") if request.HasField("params") else None,
            request_id=request.request_id,
            correlation_id=request.correlation_id,
        )
        return pb.RunPipelineResponse(run=run_to_proto(run), duplicate=duplicate)

    async def GetRun(
        self, request: pb.GetRunRequest, context: aio.ServicerContext
    ) -> pb.GetRunResponse:
        run, rejects = await self.pipelines.get_run(
            current_tenant(), request.id, request.reject_limit
        )
        return pb.GetRunResponse(
            run=run_to_proto(run), rejects=[reject_to_proto(r) for r in rejects]
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: aio.ServicerContext
    ) -> pb.ListRunsResponse:
        states = enum_filter(request.states, RunState, what="run state", prefix="RUN_STATE_")
        runs, token = await self.pipelines.list_runs(
            current_tenant(),
            pipeline=request.pipeline,
            states=states,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: aio.ServicerContext
    ) -> pb.CancelRunResponse:
        run = await self.pipelines.cancel_run(current_tenant(), request.id)
        return pb.CancelRunResponse(run=run_to_proto(run))

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        async for run in self.pipelines.watch_run(current_tenant(), request.id):
            yield pb.WatchRunResponse(run=run_to_proto(run))
