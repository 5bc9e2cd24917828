"""What the agent manager needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from datamcp.core.agents.model import AuditRecord, Task, TaskState


class TaskRepository(Protocol):
    async def insert(self, rows: Sequence[tuple[Task, str]]) -> None:
        """Store new tasks, each under its owner, in one statement; a task
        whose id is already stored is left as it is."""
        ...

    async def save(self, tasks: Sequence[Task]) -> None:
        """Write the mutable fields (state, attempts, progress, result...) by id."""
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
