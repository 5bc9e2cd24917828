"""Stream-job RPCs of PipelineService (CreateStreamJob ... PushRecords).

The PipelineService servicer (pipeline_service.py) inherits
:class:`StreamJobMethods`, so the stream-job RPCs are implemented here and
the batch RPCs there. The servicer sets ``self.streams`` (the core stream-job
service, ``app.streams``) before serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio

from datamcp.core.context import current_tenant
from datamcp.core.errors import InvalidArgument
from datamcp.core.streams import PushMessage, StreamService
from datamcp.core.streams.records import Rejection
from datamcp.entrypoints.grpc.stream_convert import job_to_proto, spec_from_proto
from datamcp.entrypoints.grpc.values import from_struct
from datamcp.v1 import streams_pb2


class StreamJobMethods:
    """Mixin holding the stream-job RPC handlers; uses ``self.streams``."""

    streams: StreamService

    async def CreateStreamJob(
        self, request: streams_pb2.CreateStreamJobRequest, context: aio.ServicerContext
    ) -> streams_pb2.CreateStreamJobResponse:
        tenant = current_tenant()
        spec = spec_from_proto(request.job.spec)
        job, duplicate = await self.streams.create(
            tenant, request.job.name, spec, request.request_id
        )
        return streams_pb2.CreateStreamJobResponse(job=job_to_proto(job), duplicate=duplicate)

    async def GetStreamJob(
        self, request: streams_pb2.GetStreamJobRequest, context: aio.ServicerContext
    ) -> streams_pb2.GetStreamJobResponse:
        job = await self.streams.get(current_tenant(), request.id)
        return streams_pb2.GetStreamJobResponse(job=job_to_proto(job))

    async def ListStreamJobs(
        self, request: streams_pb2.ListStreamJobsRequest, context: aio.ServicerContext
    ) -> streams_pb2.ListStreamJobsResponse:
        jobs, token = await self.streams.page(
            current_tenant(), request.page_size, request.page_token
        )
        return streams_pb2.ListStreamJobsResponse(
            jobs=[job_to_proto(j) for j in jobs], next_page_token=token
        )

    async def DeleteStreamJob(
        self, request: streams_pb2.DeleteStreamJobRequest, context: aio.ServicerContext
    ) -> streams_pb2.DeleteStreamJobResponse:
        await self.streams.delete(current_tenant(), request.id)
        return streams_pb2.DeleteStreamJobResponse()

    async def PushRecords(
        self,
        request_iterator: AsyncIterator[streams_pb2.PushRecordsRequest],
        context: aio.ServicerContext,
    ) -> streams_pb2.PushRecordsResponse:
        async def messages() -> AsyncIterator[PushMessage]:
            async for request in request_iterator:
                records = [_record(r) for r in request.records]
                yield PushMessage(request.job_id, records, request.request_id)

        summary = await self.streams.push(current_tenant(), messages())
        return streams_pb2.PushRecordsResponse(
            accepted=summary.accepted,
            rejected=summary.rejected,
            rejections=[
                streams_pb2.RecordRejection(index=r.index, field=r.field, description=r.description)
                for r in summary.rejections
            ],
        )


def _record(record: struct_pb2.Struct) -> Any:
    """A pushed record as data, or, when it is not JSON (NaN, too deep), its
    rejection: refused alone with its field, like any other bad record."""
    try:
        return from_struct(record, "")
    except InvalidArgument as exc:
        (violation,) = exc.violations
        return Rejection(violation.field.lstrip("."), violation.description)
