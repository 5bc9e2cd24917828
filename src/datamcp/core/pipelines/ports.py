"""What the pipeline core needs from the outside: sources, destinations, the
connectors that build them from a spec, and the store of pipelines and runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from datamcp.core.errors import FieldViolation
from datamcp.core.pipelines.model import (
    Part,
    Pipeline,
    PipelineSpec,
    Reject,
    Run,
    RunState,
    StageCounters,
)

if TYPE_CHECKING:  # the engine's libraries are imported by the engine, not here
    import pyarrow as pa


class TransientError(Exception):
    """A source or destination failed in a way another attempt may cure
    (connection refused, timeout, 5xx). The run is retried from the start;
    destinations commit only at the end, so nothing is written twice."""


class PermanentError(Exception):
    """A source or destination failed for good (missing file, bad query, 4xx);
    ``reason`` is the run's error reason."""

    def __init__(self, message: str, reason: str = "CONNECTOR_ERROR") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SourceBatch:
    table: pa.Table
    """Rows as Arrow columns; a column's type is the same in every batch."""
    rejects: list[tuple[Any, str, int]] = field(default_factory=list)
    """Rows the source could not read: (raw values or mapping, reason, row number)."""


@dataclass(frozen=True, slots=True)
class ReadContext:
    tenant: str
    params: Mapping[str, Any]
    cursor_column: str = ""
    cursor: Any = None


class Source(Protocol):
    async def open(self) -> list[str]:
        """Start reading; returns the column names."""
        ...

    async def read(self, size: int) -> SourceBatch | None:
        """About ``size`` rows; None at the end."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int
    rejects: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """Rows the destination refused: (row, reason)."""


class Destination(Protocol):
    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        """Prepare to write rows of these columns and pipeline types.

        Raises:
            PermanentError: reason ``SCHEMA_FROZEN`` when the table lacks columns
                under a freeze contract.
        """
        ...

    async def write(self, table: pa.Table) -> WriteResult:
        """Write a batch (not yet visible to readers)."""
        ...

    async def commit(self) -> None:
        """Make everything written visible at once."""
        ...

    async def abort(self) -> None:
        """Drop everything written; the destination is as before the run."""
        ...


class Connectors(Protocol):
    def check(self, spec: PipelineSpec) -> list[FieldViolation]:
        """Problems only the configuration can tell: paths outside the data
        roots, unknown connections or APIs."""
        ...

    def source(self, part: Part, ctx: ReadContext, path: str = "source") -> Source: ...

    def destination(self, part: Part, run_id: str) -> Destination: ...


class PipelineRepository(Protocol):
    async def add_pipeline(self, pipeline: Pipeline) -> bool:
        """Insert; False when the (tenant, name) is taken."""
        ...

    async def get_pipeline(self, tenant: str, id_or_name: str) -> Pipeline | None: ...

    async def update_pipeline(self, pipeline: Pipeline, expected_version: int) -> bool:
        """Replace spec/description/version/next_fire_at when the stored
        version is ``expected_version``; False otherwise."""
        ...

    async def delete_pipeline(self, tenant: str, pipeline_id: str) -> bool: ...

    async def page_pipelines(self, tenant: str, after: str, limit: int) -> list[Pipeline]: ...

    async def set_cursor(self, pipeline_id: str, cursor: Any) -> None: ...

    async def due_pipelines(self, now: float, limit: int) -> list[Pipeline]:
        """Pipelines (any tenant) whose schedule is due."""
        ...

    async def claim_slot(self, pipeline_id: str, due: float, following: float) -> bool:
        """Move ``next_fire_at`` from ``due`` to ``following``; True for the
        one caller (of any replica) that moved it."""
        ...

    async def triggered_pipelines(self) -> list[Pipeline]:
        """Every pipeline (any tenant) with event triggers."""
        ...

    async def insert_runs(self, runs: Sequence[Run]) -> None:
        """Insert; a run id already stored is left as it is."""
        ...

    async def save_runs(self, runs: Sequence[Run]) -> None: ...

    async def get_run(self, tenant: str, run_id: str) -> Run | None: ...

    async def page_runs(
        self,
        tenant: str,
        *,
        pipeline_id: str,
        states: Sequence[RunState],
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Run]: ...

    async def active_runs(self, tenant: str, pipeline_id: str) -> int: ...

    async def request_cancel(self, tenant: str, run_id: str) -> bool: ...

    async def cancel_requested(self, run_id: str) -> bool: ...

    async def unfinished_owners(self) -> list[str]: ...

    async def runs_of_owners(self, owners: Sequence[str]) -> list[Run]: ...

    async def add_rejects(self, run_id: str, tenant: str, rejects: Sequence[Reject]) -> None: ...

    async def clear_rejects(self, run_id: str) -> None: ...

    async def rejects(self, tenant: str, run_id: str, limit: int) -> list[Reject]: ...


# ---- what a run reports ---------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    stages: list[StageCounters]
    rejects: list[Reject]
    final: bool = False

    @property
    def read(self) -> int:
        return self.stages[0].read

    @property
    def written(self) -> int:
        return self.stages[-1].written

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.stages)


@dataclass(frozen=True, slots=True)
class Outcome:
    stages: list[StageCounters]
    cursor: Any


ProgressFn = Callable[[Progress], Awaitable[None]]


class RejectLimit(Exception):
    pass
