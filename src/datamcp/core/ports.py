"""Ports: what the core needs from the outside world, as Protocols.

Adapters (SQLAlchemy today, others later) implement these; the core only
ever sees the protocol, so unit tests can hand it fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from datamcp.core.events.ports import EventRepository
    from datamcp.core.instances import Instance


class InstanceRepository(Protocol):
    async def add(self, instance: Instance) -> None: ...
    async def touch(self, instance_id: str, at: float) -> None: ...
    async def stop(self, instance_id: str, at: float) -> None: ...
    async def get(self, instance_id: str) -> Instance | None: ...


class UnitOfWork(Protocol):
    """One transaction: nothing is kept unless ``commit`` is awaited."""

    @property
    def instances(self) -> InstanceRepository: ...

    @property
    def events(self) -> EventRepository: ...

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
