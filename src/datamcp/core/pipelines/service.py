"""The pipeline service entry points call: declare, validate, run, follow.

Also hosts the cron scheduler (a due slot is claimed with a conditional
update, so one replica fires it) and the spec-declared event triggers (one
durable subscription per pipeline, shared by the replicas).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from datamcp.core import paging
from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from datamcp.core.events.api import EventsApi
from datamcp.core.events.model import Event, EventFilter
from datamcp.core.events.router import Action
from datamcp.core.pipelines.frame import json_safe
from datamcp.core.pipelines.limits import (
    MAX_DESCRIPTION,
    check_id,
    check_json,
    shorten,
    text_problem,
)
from datamcp.core.pipelines.model import (
    Document,
    Pipeline,
    PipelineSpec,
    Reject,
    Run,
    RunState,
    Trigger,
    new_run_id,
    run_id_for,
)
from datamcp.core.pipelines.ports import Connectors, PermanentError, ReadContext, TransientError
from datamcp.core.pipelines.runs import RunManager
from datamcp.core.pipelines.spec import (
    NAME_HELP,
    NAME_RE,
    load_text,
    parse_document,
    parse_spec,
)
from datamcp.core.pipelines.triggers import EventTriggers, fire_due, next_fire
from datamcp.core.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)

RUN_ACTION = "pipeline.run"
MAX_PREVIEW = 1000
MAX_REJECTS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Definition:
    """What a client gives to create, update or validate: a parsed spec (plain
    data, as from protobuf) or YAML/JSON text."""

    spec: Any = None
    text: str = ""

    def document(self, name: str = "", description: str = "") -> Document:
        """Parse and check.

        Raises:
            InvalidArgument: every problem with its field path.
        """
        if self.text:
            raw = load_text(self.text)
            doc = parse_document(raw)
            return Document(name or doc.name, description or doc.description, doc.spec)
        if self.spec is None:
            raise InvalidArgument(
                "give spec or spec_text",
                [FieldViolation("spec", "required (or spec_text)")],
                reason="INVALID_PIPELINE",
            )
        return Document(name, description, parse_spec(self.spec, "spec."))


@dataclass(frozen=True, slots=True)
class ValidationResult:
    problems: list[FieldViolation]
    spec: PipelineSpec | None = None
    columns: list[str] | None = None
    rows: list[dict[str, Any]] | None = None
    rejects: list[Reject] | None = None


class PipelineService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        runs: RunManager,
        connectors: Connectors,
        events: EventsApi,
        *,
        schedule_tick: float = 1.0,
        trigger_refresh: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uow = uow
        self.runs = runs
        self.connectors = connectors
        self._events = events
        self._tick = schedule_tick
        self._trigger_refresh = trigger_refresh
        self._clock = clock
        self._scheduler: asyncio.Task[None] | None = None
        self.triggers = EventTriggers(uow, events, self._run_for_event)

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self.runs.start()
        self.triggers.started = True
        self._scheduler = asyncio.create_task(self._schedule_loop(), name="pipeline-scheduler")

    async def stop(self) -> None:
        await cancel_and_wait(self._scheduler)
        self._scheduler = None
        await self.triggers.stop()
        await self.runs.stop()

    # ---- declaring -----------------------------------------------------------------

    def check(self, doc: Document) -> None:
        problems = self.connectors.check(doc.spec)
        if problems:
            raise InvalidArgument(
                f"invalid pipeline spec: {len(problems)} problem(s)",
                problems,
                reason="INVALID_PIPELINE",
            )

    async def create(
        self, tenant: str, definition: Definition, name: str = "", description: str = ""
    ) -> Pipeline:
        """Raises InvalidArgument (field problems) or AlreadyExists (name taken)."""
        doc = definition.document(name, description)
        problems: list[FieldViolation] = []
        if not doc.name:
            problems.append(FieldViolation("name", "required: " + NAME_HELP))
        elif not NAME_RE.match(doc.name):
            problems.append(FieldViolation("name", NAME_HELP))
        problems += _description_problems(doc.description)
        problems += self.connectors.check(doc.spec)
        if problems:
            raise InvalidArgument("invalid pipeline", problems, reason="INVALID_PIPELINE")
        now = self._clock()
        pipeline = Pipeline(
            id=str(uuid.uuid4()),
            tenant=tenant,
            name=doc.name,
            description=doc.description,
            spec=doc.spec,
            version=1,
            created_at=now,
            updated_at=now,
            next_fire_at=next_fire(doc.spec.schedule, now),
        )
        async with self._uow() as tx:
            added = await tx.pipelines.add_pipeline(pipeline)
            if added:
                await tx.commit()
        if not added:
            raise AlreadyExists(
                f"a pipeline named {doc.name!r} exists; update it or pick another name",
                reason="PIPELINE_EXISTS",
            )
        await self.triggers.sync(pipeline)
        return pipeline

    async def get(self, tenant: str, id_or_name: str, field: str = "id") -> Pipeline:
        check_id(id_or_name, field)
        async with self._uow() as tx:
            pipeline = await tx.pipelines.get_pipeline(tenant, id_or_name)
        if pipeline is None:
            raise NotFound(
                f"pipeline {shorten(id_or_name)!r} not found", reason="PIPELINE_NOT_FOUND"
            )
        return pipeline

    async def list_pipelines(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[Pipeline], str]:
        size = paging.page_size(page_size)
        after = paging.decode(page_token)
        if after is not None and not isinstance(after, str):
            raise paging.bad_token()
        async with self._uow() as tx:
            rows = await tx.pipelines.page_pipelines(tenant, after or "", size + 1)
        token = paging.encode(rows[size - 1].name) if len(rows) > size else ""
        return rows[:size], token

    async def update(
        self,
        tenant: str,
        id_or_name: str,
        definition: Definition,
        *,
        description: str = "",
        expected_version: int = 0,
    ) -> Pipeline:
        current = await self.get(tenant, id_or_name)
        doc = definition.document(current.name, description or current.description)
        problems = _description_problems(doc.description)
        if problems:
            raise InvalidArgument("invalid description", problems, reason="INVALID_PIPELINE")
        if expected_version < 0:
            raise InvalidArgument(
                "invalid expected_version",
                [FieldViolation("expected_version", "a version number (0 = any)")],
            )
        if doc.name != current.name:
            raise InvalidArgument(
                "a pipeline cannot be renamed",
                [FieldViolation("spec_text: name", f"must stay {current.name!r}")],
                reason="INVALID_PIPELINE",
            )
        self.check(doc)
        if expected_version and expected_version != current.version:
            raise Conflict(
                f"pipeline {current.name} is at version {current.version}, not {expected_version}",
                metadata={"version": str(current.version)},
            )
        now = self._clock()
        updated = replace(
            current,
            spec=doc.spec,
            description=doc.description,
            version=current.version + 1,
            updated_at=now,
            next_fire_at=next_fire(doc.spec.schedule, now),
        )
        async with self._uow() as tx:
            ok = await tx.pipelines.update_pipeline(updated, current.version)
            if ok:
                await tx.commit()
        if not ok:
            raise Conflict(
                f"pipeline {current.name} changed meanwhile; read it again and retry",
            )
        await self.triggers.sync(updated)
        return updated

    async def delete(self, tenant: str, id_or_name: str) -> None:
        pipeline = await self.get(tenant, id_or_name)
        async with self._uow() as tx:
            if await tx.pipelines.active_runs(tenant, pipeline.id):
                raise FailedPrecondition(
                    f"pipeline {pipeline.name} has an unfinished run; cancel it first",
                    reason="PIPELINE_BUSY",
                )
            await tx.pipelines.delete_pipeline(tenant, pipeline.id)
            await tx.commit()
        await self.triggers.drop(pipeline.id, tenant)

    async def validate(
        self,
        tenant: str,
        definition: Definition,
        *,
        preview_rows: int = 0,
        params: Mapping[str, Any] | None = None,
    ) -> ValidationResult:
        """Check a spec; when valid and ``preview_rows`` > 0, read the source
        and return the first rows after the transforms. Problems are answers
        here, not errors (the same answers ``datamcp pipeline validate`` gives)."""
        if preview_rows < 0 or preview_rows > MAX_PREVIEW:
            raise InvalidArgument(
                "invalid preview_rows", [FieldViolation("preview_rows", f"0 to {MAX_PREVIEW}")]
            )
        if params is not None:
            check_json(dict(params), "params")
        try:
            doc = definition.document()
        except InvalidArgument as exc:
            return ValidationResult(list(exc.violations))
        problems = self.connectors.check(doc.spec)
        if problems or not preview_rows:
            return ValidationResult(problems, doc.spec)
        ctx = ReadContext(tenant, {**doc.spec.params, **(params or {})})
        try:
            columns, rows, rejects = await self.runs.engine.preview(doc.spec, ctx, preview_rows)
        except InvalidArgument as exc:
            return ValidationResult(list(exc.violations), doc.spec)
        except (PermanentError, TransientError) as exc:
            return ValidationResult([FieldViolation("source", f"cannot preview: {exc}")], doc.spec)
        return ValidationResult(
            [],
            doc.spec,
            columns,
            [{c: json_safe(v) for c, v in zip(columns, r, strict=False)} for r in rows],
            rejects,
        )

    # ---- running -------------------------------------------------------------------

    async def run(
        self,
        tenant: str,
        id_or_name: str,
        *,
        params: Mapping[str, Any] | None = None,
        request_id: str = "",
        correlation_id: str = "",
        trigger: str = Trigger.MANUAL,
    ) -> tuple[Run, bool]:
        """Start a run; the same ``request_id`` always names the same run."""
        check_id(request_id, "request_id", required=False)
        check_id(correlation_id, "correlation_id", required=False)
        if params is not None:
            check_json(dict(params), "params")
        pipeline = await self.get(tenant, id_or_name)
        run_id = run_id_for(tenant, request_id) if request_id else new_run_id()
        return await self.runs.submit(
            pipeline,
            params=dict(params or {}),
            trigger=str(trigger),
            request_id=request_id,
            correlation_id=correlation_id,
            run_id=run_id,
        )

    async def get_run(
        self, tenant: str, run_id: str, reject_limit: int = 0
    ) -> tuple[Run, list[Reject]]:
        if reject_limit < 0 or reject_limit > MAX_REJECTS_PAGE:
            raise InvalidArgument(
                "invalid reject_limit",
                [FieldViolation("reject_limit", f"0 to {MAX_REJECTS_PAGE}")],
            )
        check_id(run_id, "id")
        run = await self.runs.get(tenant, run_id)
        rejects: list[Reject] = []
        if reject_limit:
            async with self._uow() as tx:
                rejects = await tx.pipelines.rejects(tenant, run_id, reject_limit)
        return run, rejects

    async def list_runs(
        self,
        tenant: str,
        *,
        pipeline: str,
        states: list[RunState],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Run], str]:
        size = paging.page_size(page_size)
        before = paging.keyset(page_token)
        pipeline_id = (await self.get(tenant, pipeline, "pipeline")).id if pipeline else ""
        async with self._uow() as tx:
            rows = await tx.pipelines.page_runs(
                tenant, pipeline_id=pipeline_id, states=states, before=before, limit=size + 1
            )
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = paging.encode([last.created_at, last.id])
        return rows[:size], token

    async def cancel_run(self, tenant: str, run_id: str) -> Run:
        check_id(run_id, "id")
        return await self.runs.cancel(tenant, run_id)

    def watch_run(self, tenant: str, run_id: str) -> AsyncIterator[Run]:
        check_id(run_id, "id")
        return self.runs.watch(tenant, run_id)

    async def run_to_end(
        self, tenant: str, pipeline: str, params: dict[str, Any], correlation_id: str
    ) -> Run:
        run, _ = await self.run(
            tenant, pipeline, params=params, correlation_id=correlation_id, trigger=Trigger.AGENT
        )
        return await self.runs.wait(tenant, run.id)

    # ---- schedules -------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                await self.fire_due()
                if time.monotonic() - last_refresh >= self._trigger_refresh:
                    last_refresh = time.monotonic()
                    await self.triggers.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("pipeline scheduler tick failed", exc_info=True)
            await asyncio.sleep(self._tick)

    async def fire_due(self) -> int:
        """Start a run for every due schedule slot this replica claims.

        Raises:
            FailedPrecondition: this deployment cannot run pipelines (nothing
                is claimed: the servers fire those slots).
        """
        self.runs.engine  # noqa: B018
        return await fire_due(self._uow, self.runs, self._clock())

    async def _run_for_event(self, pipeline: str, event: Event, params: Mapping[str, Any]) -> Run:
        merged = {**({"event": event.data} if event.data is not None else {}), **params}
        request_id = f"event:{pipeline}:{event.id}"
        if len(request_id) > 128 or text_problem(request_id) is not None:
            # One run per (pipeline, event) still: a digest, never a cut
            # (two long ids sharing a prefix are two events).
            digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
            request_id = f"event:{digest}"
        correlation_id = event.correlation_id or event.id
        if text_problem(correlation_id, limit=128) is not None:
            correlation_id = ""
        run, _ = await self.run(
            event.tenant,
            pipeline,
            params=merged,
            request_id=request_id,
            correlation_id=correlation_id,
            trigger=Trigger.EVENT,
        )
        return run

    def router_action(self) -> Action:
        """The ``pipeline.run`` router action: params ``{pipeline, params}``.
        The run id derives from the event, so a redelivery runs nothing new."""

        async def action(cause: Event, params: Mapping[str, Any]) -> None:
            await self._run_for_event(
                str(params.get("pipeline", "")), cause, dict(params.get("params", {}))
            )

        return action

    def metrics(self) -> dict[str, float]:
        r = self.runs
        return {
            "runs_active": float(r.running),
            "runs_succeeded": float(r.succeeded),
            "runs_failed": float(r.failed),
            "runs_cancelled": float(r.cancelled),
            "rows_written": float(r.rows_written),
        }


def _description_problems(description: str) -> list[FieldViolation]:
    problem = text_problem(description, limit=MAX_DESCRIPTION, control=True)
    return [] if problem is None else [FieldViolation("description", problem)]


class AgentPort:
    """:class:`~datamcp.core.agents.builtin.pipeline.PipelinePort` over the service."""

    def __init__(self, service: PipelineService) -> None:
        self._service = service

    async def run(
        self, tenant: str, pipeline: str, params: dict[str, Any], correlation_id: str
    ) -> dict[str, Any]:
        run = await self._service.run_to_end(tenant, pipeline, params, correlation_id)
        return run.summary()


def validate_router_params(params: Mapping[str, Any]) -> str | None:
    """A problem with a ``pipeline.run`` trigger's params, or None."""
    if not isinstance(params.get("pipeline"), str) or not params.get("pipeline"):
        return "params.pipeline must name a pipeline (id or name)"
    if not isinstance(params.get("params", {}), dict):
        return "params.params must be a table"
    return None


__all__ = [
    "RUN_ACTION",
    "AgentPort",
    "Definition",
    "EventFilter",
    "PipelineService",
    "ValidationResult",
    "validate_router_params",
]
