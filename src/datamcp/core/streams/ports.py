"""What stream jobs need from storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from datamcp.core.streams.model import Counters, StreamJob
from datamcp.core.streams.windows import WindowState


class Fenced(Exception):
    """This process no longer owns the job (deleted, or taken over after its
    lease ran out): the checkpoint was not written and the runner must stop."""


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One closed window as a row of a destination table."""

    id: str  # deterministic per (job, key, window): re-inserting it is a no-op
    tenant: str
    job_id: str
    key: str
    window_start: float
    window_end: float
    record_count: int
    aggregates: dict[str, Any]
    emitted_at: float


@dataclass(slots=True)
class Checkpoint:
    """Everything one step of a job commits together."""

    job_id: str
    owner: str
    lease_until: float
    max_event_ms: int | None
    counters: Counters
    at: float
    upserts: Sequence[WindowState] = ()
    deletes: Sequence[tuple[str, int]] = ()
    table: str = ""
    rows: Sequence[ResultRow] = field(default_factory=list)


class StreamRepository(Protocol):
    async def insert(self, job: StreamJob, owner: str, lease_until: float) -> bool:
        """Store a new job; False when (tenant, request_id) is already taken."""
        ...

    async def get(self, tenant: str, job_id: str) -> StreamJob | None: ...

    async def by_request(self, tenant: str, request_id: str) -> StreamJob | None: ...

    async def page(
        self, tenant: str, after: tuple[float, str] | None, limit: int
    ) -> list[StreamJob]:
        """Oldest first; ``after`` is the (created_at, id) of the last job seen."""
        ...

    async def delete(self, tenant: str, job_id: str) -> bool:
        """Drop the job and its window state; False when it did not exist."""
        ...

    async def claim(self, owner: str, now: float, lease_until: float) -> list[StreamJob]:
        """Take every job whose lease ran out, renew ours; returns all jobs ``owner`` holds."""
        ...

    async def renew(self, job_id: str, owner: str, lease_until: float) -> bool:
        """Extend ``owner``'s lease (and clear the last error: the job is healthy)."""
        ...

    async def release(self, owner: str, job_ids: Sequence[str]) -> None:
        """Give leases back at once (graceful stop), so another process resumes without waiting."""
        ...

    async def windows(self, job_id: str) -> list[WindowState]: ...

    async def checkpoint(self, cp: Checkpoint) -> None:
        """Write the job's state and window changes, fenced by ownership.

        Raises:
            Fenced: ``cp.owner`` does not hold the job any more.
        """
        ...

    async def record_error(self, job_id: str, owner: str, error: str) -> None: ...

    async def ensure_table(self, tenant: str, table: str, now: float) -> None:
        """Create a destination table when missing, and make it the tenant's:
        a destination table belongs to the tenant whose job first used it.

        Raises:
            FailedPrecondition: the name is a mesh table, a table of another
                shape, or another tenant's destination.
        """
        ...
