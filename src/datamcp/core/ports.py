"""Ports: what the core needs from the outside world, as Protocols.

Adapters (SQLAlchemy today, others later) implement these; the core only
ever sees the protocol, so unit tests can hand it fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from datamcp.core.agents.ports import AuditRepository, TaskRepository
    from datamcp.core.events.ports import EventRepository
    from datamcp.core.instance_model import Instance, ListedAgent
    from datamcp.core.pipelines.ports import PipelineRepository
    from datamcp.core.streams.ports import StreamRepository


class InstanceRepository(Protocol):
    async def add(self, instance: Instance) -> None: ...
    async def touch(self, instance_id: str, at: float) -> None: ...
    async def stop(self, instance_id: str, at: float) -> None: ...
    async def get(self, instance_id: str) -> Instance | None: ...
    async def prune(self, before: float, keep: str) -> int:
        """Delete instances silent since ``before`` (never ``keep``) and the
        agents they listed."""
        ...

    async def list_agent(
        self, instance_id: str, agent_id: str, descriptor: str, at: float
    ) -> None: ...
    async def unlist_agent(self, agent_id: str) -> None: ...
    async def listed_agents(self, alive_since: float) -> list[ListedAgent]:
        """Agents listed by instances that heartbeated since ``alive_since``
        and did not stop."""
        ...


class UnitOfWork(Protocol):
    """One transaction: nothing is kept unless ``commit`` is awaited."""

    @property
    def instances(self) -> InstanceRepository: ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def tasks(self) -> TaskRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def pipelines(self) -> PipelineRepository: ...

    @property
    def streams(self) -> StreamRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True, slots=True)
class WriteOp:
    """A kind of row change that can ride along with an event-bus group commit.

    All writes of one op in a commit are applied together, in arrival order,
    by one ``apply`` call (so an adapter can use one ``executemany``). Ops
    run in ``rank`` order: an insert (rank 0) always lands before an update
    (rank 1) of the same row committed with it.
    """

    name: str
    rank: int
    apply: Callable[[UnitOfWork, Sequence[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Write:
    op: WriteOp
    item: Any
