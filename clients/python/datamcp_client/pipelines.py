"""``client.pipelines``: batch pipelines and their runs (PipelineService).

Example:
    spec = open("examples/quickstart/paid-orders.yaml").read()
    pipeline = await client.pipelines.create(spec)
    run = await client.pipelines.run(pipeline.id)
    run = await client.pipelines.wait_run(run.id)
    print(run.state, run.rows_written)
"""

from __future__ import annotations

import builtins
import enum
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format

from datamcp.v1 import pipelines_pb2, pipelines_pb2_grpc
from datamcp_client._rpc import Connection, enum_value, paged, to_datetime
from datamcp_client._values import JSON, fill_struct, from_struct, from_value
from datamcp_client.errors import FieldViolation


class RunState(enum.Enum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def done(self) -> bool:
        return self.value >= RunState.SUCCEEDED.value


_RUN_STATES = {s.value: s for s in RunState}


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A stored pipeline; ``spec`` is its definition as JSON (proto field names)."""

    id: str
    name: str
    description: str
    version: int
    spec: dict[str, JSON]
    cursor: JSON
    schedule: str
    create_time: datetime | None
    update_time: datetime | None
    next_run_time: datetime | None

    @classmethod
    def from_proto(cls, p: pipelines_pb2.Pipeline) -> Pipeline:
        return cls(
            id=p.id,
            name=p.name,
            description=p.description,
            version=p.version,
            spec=json_format.MessageToDict(p.spec, preserving_proto_field_name=True),
            cursor=from_value(p.cursor) if p.HasField("cursor") else None,
            schedule=p.spec.schedule,
            create_time=to_datetime(p.create_time),
            update_time=to_datetime(p.update_time),
            next_run_time=to_datetime(p.next_run_time),
        )


@dataclass(frozen=True, slots=True)
class Stage:
    """Counters of one stage (``source``, ``transforms[1].filter``, ``destination``)."""

    stage: str
    read: int
    written: int
    rejected: int


@dataclass(frozen=True, slots=True)
class Reject:
    stage: str
    reason: str
    row: dict[str, JSON]
    row_number: int


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a pipeline. ``rejects`` is filled by ``get_run(reject_limit=N)``."""

    id: str
    pipeline_id: str
    pipeline_name: str
    state: RunState
    trigger: str
    rows_read: int
    rows_written: int
    rows_rejected: int
    stages: tuple[Stage, ...]
    error_reason: str
    error_message: str
    attempts: int
    request_id: str
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    rejects: tuple[Reject, ...] = ()

    @property
    def done(self) -> bool:
        return self.state.done

    @classmethod
    def from_proto(cls, r: pipelines_pb2.Run, rejects: Iterable[pipelines_pb2.Reject] = ()) -> Run:
        return cls(
            id=r.id,
            pipeline_id=r.pipeline_id,
            pipeline_name=r.pipeline_name,
            state=_RUN_STATES[r.state],
            trigger=r.trigger,
            rows_read=r.rows_read,
            rows_written=r.rows_written,
            rows_rejected=r.rows_rejected,
            stages=tuple(Stage(s.stage, s.read, s.written, s.rejected) for s in r.stages),
            error_reason=r.error.reason,
            error_message=r.error.message,
            attempts=r.attempts,
            request_id=r.request_id,
            create_time=to_datetime(r.create_time),
            start_time=to_datetime(r.start_time),
            end_time=to_datetime(r.end_time),
            rejects=tuple(
                Reject(j.stage, j.reason, from_struct(j.row), j.row_number) for j in rejects
            ),
        )


@dataclass(frozen=True, slots=True)
class Validation:
    """What ValidatePipeline answered: problems by field path, and a preview."""

    valid: bool
    problems: tuple[FieldViolation, ...]
    columns: tuple[str, ...]
    preview_rows: tuple[dict[str, JSON], ...]


def _definition(spec: str | Mapping[str, JSON]) -> str:
    # Text (YAML or JSON) is the one format: a mapping is sent as JSON text,
    # so both go through the server's own spec parser and its field paths.
    return spec if isinstance(spec, str) else json.dumps(spec)


class PipelinesClient:
    """Batch pipelines. Reached as ``client.pipelines``."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._stub = pipelines_pb2_grpc.PipelineServiceStub(connection.channel)

    async def validate(
        self,
        spec: str | Mapping[str, JSON],
        *,
        preview_rows: int = 0,
        params: Mapping[str, JSON] | None = None,
    ) -> Validation:
        """Check a spec (YAML/JSON text or a mapping) against the server's configuration."""
        request = pipelines_pb2.ValidatePipelineRequest(
            spec_text=_definition(spec), preview_rows=preview_rows
        )
        if params:
            fill_struct(request.params, params)
        r = await self._conn.unary(self._stub.ValidatePipeline, request, idempotent=True)
        return Validation(
            valid=r.valid,
            problems=tuple(FieldViolation(p.field, p.description) for p in r.problems),
            columns=tuple(r.columns),
            preview_rows=tuple(from_struct(row) for row in r.preview_rows),
        )

    async def create(
        self, spec: str | Mapping[str, JSON], *, name: str = "", description: str = ""
    ) -> Pipeline:
        """Store a pipeline (its name comes from the spec unless ``name`` is given)."""
        request = pipelines_pb2.CreatePipelineRequest(
            name=name, description=description, spec_text=_definition(spec)
        )
        r = await self._conn.unary(self._stub.CreatePipeline, request, idempotent=False)
        return Pipeline.from_proto(r.pipeline)

    async def update(
        self, pipeline_id: str, spec: str | Mapping[str, JSON], *, expected_version: int = 0
    ) -> Pipeline:
        """Replace a pipeline's spec (AbortedError when ``expected_version`` is stale)."""
        request = pipelines_pb2.UpdatePipelineRequest(
            id=pipeline_id, spec_text=_definition(spec), expected_version=expected_version
        )
        r = await self._conn.unary(self._stub.UpdatePipeline, request, idempotent=False)
        return Pipeline.from_proto(r.pipeline)

    async def get(self, pipeline_id: str) -> Pipeline:
        """A pipeline by id or name."""
        r = await self._conn.unary(
            self._stub.GetPipeline,
            pipelines_pb2.GetPipelineRequest(id=pipeline_id),
            idempotent=True,
        )
        return Pipeline.from_proto(r.pipeline)

    async def delete(self, pipeline_id: str) -> None:
        await self._conn.unary(
            self._stub.DeletePipeline,
            pipelines_pb2.DeletePipelineRequest(id=pipeline_id),
            idempotent=False,
        )

    def list(self, *, limit: int | None = None) -> AsyncIterator[Pipeline]:
        async def fetch(token: str) -> tuple[builtins.list[Pipeline], str]:
            r = await self._conn.unary(
                self._stub.ListPipelines,
                pipelines_pb2.ListPipelinesRequest(page_token=token),
                idempotent=True,
            )
            return [Pipeline.from_proto(p) for p in r.pipelines], r.next_page_token

        return paged(fetch, limit)

    async def run(
        self,
        pipeline_id: str,
        *,
        params: Mapping[str, JSON] | None = None,
        request_id: str | None = None,
        correlation_id: str = "",
    ) -> Run:
        """Start a run (at once; follow it with :meth:`watch_run` or :meth:`wait_run`).

        ``request_id`` makes the start idempotent; one is generated when None,
        so a retried call never starts two runs.
        """
        request = pipelines_pb2.RunPipelineRequest(
            id=pipeline_id,
            request_id=request_id or uuid.uuid4().hex,
            correlation_id=correlation_id,
        )
        if params:
            fill_struct(request.params, params)
        r = await self._conn.unary(self._stub.RunPipeline, request, idempotent=True)
        return Run.from_proto(r.run)

    async def get_run(self, run_id: str, *, reject_limit: int = 0) -> Run:
        r = await self._conn.unary(
            self._stub.GetRun,
            pipelines_pb2.GetRunRequest(id=run_id, reject_limit=reject_limit),
            idempotent=True,
        )
        return Run.from_proto(r.run, r.rejects)

    async def cancel_run(self, run_id: str) -> Run:
        r = await self._conn.unary(
            self._stub.CancelRun, pipelines_pb2.CancelRunRequest(id=run_id), idempotent=False
        )
        return Run.from_proto(r.run)

    async def watch_run(self, run_id: str) -> AsyncIterator[Run]:
        """Yield the run on every change (progress included), ending after its final state."""
        call = self._stub.WatchRun(
            pipelines_pb2.WatchRunRequest(id=run_id), metadata=self._conn.metadata
        )
        async for item in self._conn.stream(call):
            yield Run.from_proto(item.run)

    async def wait_run(self, run_id: str) -> Run:
        """The run once it has ended."""
        last: Run | None = None
        async for last in self.watch_run(run_id):
            if last.done:
                return last
        return last if last is not None else await self.get_run(run_id)

    def runs(
        self,
        *,
        pipeline: str = "",
        states: Iterable[RunState | str] = (),
        limit: int | None = None,
    ) -> AsyncIterator[Run]:
        """Runs, newest first (of one pipeline when given)."""
        wanted = [
            s.value
            if isinstance(s, RunState)
            else enum_value(s, pipelines_pb2.RunState, "RUN_STATE_")
            for s in states
        ]

        async def fetch(token: str) -> tuple[builtins.list[Run], str]:
            r = await self._conn.unary(
                self._stub.ListRuns,
                pipelines_pb2.ListRunsRequest(
                    pipeline=pipeline,
                    states=wanted,  # type: ignore[arg-type]
                    page_token=token,
                ),
                idempotent=True,
            )
            return [Run.from_proto(x) for x in r.runs], r.next_page_token

        return paged(fetch, limit)
