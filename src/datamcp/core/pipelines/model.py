"""Pipelines, runs and rejected rows as domain values."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from datamcp.core.events.model import Event, EventFilter


@dataclass(frozen=True, slots=True)
class Part:
    """One source, transform or destination: its kind and normalized options."""

    kind: str
    options: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: dict(self.options)}


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    source: Part
    destination: Part
    transforms: tuple[Part, ...] = ()
    schedule: str = ""
    triggers: tuple[Mapping[str, Any], ...] = ()
    incremental: Mapping[str, Any] | None = None
    timeout: float = 0.0  # 0 = server default
    batch_size: int = 0  # 0 = server default
    max_rejects: int = 0  # 0 = no limit
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source.to_dict(),
            "transforms": [t.to_dict() for t in self.transforms],
            "destination": self.destination.to_dict(),
        }
        if self.schedule:
            out["schedule"] = self.schedule
        if self.triggers:
            out["triggers"] = [dict(t) for t in self.triggers]
        if self.incremental is not None:
            out["incremental"] = dict(self.incremental)
        if self.timeout:
            out["timeout"] = self.timeout
        if self.batch_size:
            out["batch_size"] = self.batch_size
        if self.max_rejects:
            out["max_rejects"] = self.max_rejects
        if self.params:
            out["params"] = dict(self.params)
        return out

    def trigger_filters(self) -> list[EventFilter]:
        return [
            EventFilter.build(list(t["types"]), t.get("source", ""), t.get("subject", ""))
            for t in self.triggers
        ]


@dataclass(frozen=True, slots=True)
class Document:
    """A spec file: optional name and description plus the spec."""

    name: str
    description: str
    spec: PipelineSpec


_RUN_NAMESPACE = uuid.UUID("a1a2d3c4-5f60-4a7b-8c9d-0e1f2a3b4c5d")


class RunState(enum.IntEnum):
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def final(self) -> bool:
        return self >= RunState.SUCCEEDED


class Trigger(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    EVENT = "event"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Pipeline:
    id: str
    tenant: str
    name: str
    description: str
    spec: PipelineSpec
    version: int
    created_at: float
    updated_at: float
    cursor: Any = None
    next_fire_at: float | None = None


@dataclass(slots=True)
class StageCounters:
    stage: str
    read: int = 0
    written: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
        }


@dataclass(frozen=True, slots=True)
class RunError:
    reason: str
    message: str


@dataclass(slots=True)
class Run:
    id: str
    tenant: str
    pipeline_id: str
    pipeline_name: str
    pipeline_version: int
    state: RunState
    trigger: str
    params: dict[str, Any]
    request_id: str
    correlation_id: str
    created_at: float
    updated_at: float
    stages: list[StageCounters] = field(default_factory=list)
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    error: RunError | None = None
    cursor_start: Any = None
    cursor_end: Any = None
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    owner: str = ""
    cancel_requested: bool = False

    def summary(self) -> dict[str, Any]:
        """What the ``pipeline`` agent and run events report."""
        out: dict[str, Any] = {
            "run_id": self.id,
            "pipeline_id": self.pipeline_id,
            "pipeline": self.pipeline_name,
            "state": self.state.name,
            "read": self.rows_read,
            "written": self.rows_written,
            "rejected": self.rows_rejected,
        }
        if self.error is not None:
            out["error"] = {"reason": self.error.reason, "message": self.error.message}
        if self.cursor_end is not None:
            out["cursor"] = self.cursor_end
        return out


@dataclass(frozen=True, slots=True)
class Reject:
    stage: str
    reason: str
    row: dict[str, Any]
    row_number: int = 0


def run_id_for(tenant: str, request_id: str) -> str:
    """A request id maps to one run id per tenant, so a retried start (even on
    another replica) cannot create a second run."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{tenant}\x00{request_id}"))


@dataclass(frozen=True, slots=True)
class RunPolicy:
    """How runs are run: timeouts, retries, concurrency, and when another
    replica's unfinished run counts as orphaned."""

    run_timeout: float = 3600.0
    max_retries: int = 2
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    max_concurrent_runs: int = 4
    stale_after: float = 8.0
    recovery_interval: float = 2.0


def start_cursor(pipeline: Pipeline) -> Any:
    """Where a run of ``pipeline`` starts: the stored cursor, else the spec's
    ``incremental.initial``."""
    if pipeline.spec.incremental is None:
        return None
    if pipeline.cursor is not None:
        return pipeline.cursor
    return pipeline.spec.incremental.get("initial")


def snapshot(run: Run) -> Run:
    """A copy of ``run`` its runner no longer changes."""
    return replace(run, stages=[replace(s) for s in run.stages], params=dict(run.params))


def new_run_id() -> str:
    return str(uuid.uuid4())


def run_event(run: Run, event_type: str, progress_count: int, now: float) -> Event:
    """The ``pipeline.run.*`` event announcing ``run``'s change (its id derives
    from the run and the change, so a retried commit stores it once)."""
    data: dict[str, Any] = {"pipeline_id": run.pipeline_id, "run_id": run.id}
    suffix = event_type.rsplit(".", 1)[-1]
    if event_type == "pipeline.run.started":
        data["trigger"] = run.trigger
    elif event_type == "pipeline.run.progress":
        stage = next((s.stage for s in reversed(run.stages) if s.read), "source")
        data.update(
            stage=stage, read=run.rows_read, written=run.rows_written, rejected=run.rows_rejected
        )
        suffix = f"progress:{run.attempts}:{progress_count}"
    elif event_type == "pipeline.run.succeeded":
        data.update(
            read=run.rows_read,
            written=run.rows_written,
            rejected=run.rows_rejected,
            duration_ms=int(((run.ended_at or 0) - (run.started_at or run.created_at)) * 1000),
        )
        if run.cursor_end is not None:
            data["cursor"] = run.cursor_end
    elif event_type == "pipeline.run.failed" and run.error is not None:
        data.update(reason=run.error.reason, message=run.error.message)
    return Event(
        id=f"{run.id}:{suffix}",
        source=f"/pipelines/{run.pipeline_name}",
        type=event_type,
        data=data,
        subject=run.id,
        time=now,
        tenant=run.tenant,
        correlation_id=run.correlation_id,
    )
