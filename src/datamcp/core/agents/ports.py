"""What the agent manager needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from datamcp.core.agents.model import AuditRecord, Task, TaskState

#: The owner of tasks waiting in the shared pool (no process holds them yet).
POOL_OWNER = "pool"


class TaskRepository(Protocol):
    async def insert(self, rows: Sequence[tuple[Task, str]]) -> None:
        """Store new tasks, each under its owner, in one statement; a task
        whose id is already stored is left as it is."""
        ...

    async def save(self, tasks: Sequence[Task], owner: str) -> None:
        """Write the mutable fields (state, attempts, progress, result...) by
        id, of the rows ``owner`` holds that are not final yet: a final state
        is never overwritten, and a process that lost a task (adopted by
        another after it looked gone) changes nothing."""
        ...

    async def holders(self, ids: Sequence[str]) -> dict[str, tuple[str, TaskState]]:
        """(owner, state) of each task, its row locked until the transaction
        ends (what a final write checks before it is made)."""
        ...

    async def request_cancel(self, tenant: str, task_id: str, at: float) -> Task | None:
        """Record a cancel request on an unfinished task; the task as it is
        now, or None when ``tenant`` has no such unfinished task."""
        ...

    async def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s unfinished tasks with a cancel request."""
        ...

    async def get(self, tenant: str, task_id: str) -> Task | None: ...

    async def page(
        self,
        tenant: str,
        *,
        states: Sequence[TaskState],
        capability: str,
        correlation_id: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Task]:
        """Newest first; ``before`` is the (created_at, id) of the last row seen."""
        ...

    async def owners_of_unfinished(self) -> list[str]:
        """Instance ids owning tasks that are not final."""
        ...

    async def adopt(
        self, owner: str, from_owners: Sequence[str], ids: Sequence[str] = ()
    ) -> list[Task]:
        """Unfinished tasks of ``from_owners`` become ``owner``'s; returns them."""
        ...

    async def claim_pooled(self, owner: str, want: PoolClaim, now: float) -> list[Task]:
        """Up to ``want.limit`` QUEUED tasks of the pool (POOL_OWNER) that
        ``want`` describes and whose deadline is after ``now`` become
        ``owner``'s, best first (priority, then age); rows other processes
        are claiming at the same moment are skipped, never waited for."""
        ...

    async def claim_expired(self, owner: str, now: float, limit: int) -> list[Task]:
        """Pool tasks whose deadline passed become ``owner``'s (to be ended)."""
        ...

    async def pooled_targets(self) -> list[tuple[bool, str]]:
        """What the pool holds work for: (pinned, agent id) or (False, capability)."""
        ...


@dataclass(frozen=True, slots=True)
class PoolClaim:
    """What one agent may take from the pool."""

    capabilities: tuple[str, ...]
    #: Tasks pinned to this agent id are its too.
    agent_id: str
    #: Only these tenants' tasks (None: any tenant's).
    tenants: frozenset[str] | None
    #: Never these tenants' (their circuit is open on this agent).
    excluded: frozenset[str]
    limit: int


class AuditRepository(Protocol):
    async def add(self, records: Sequence[AuditRecord]) -> None: ...

    async def page(
        self,
        tenant: str,
        *,
        correlation_id: str,
        agent_id: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[AuditRecord]: ...
