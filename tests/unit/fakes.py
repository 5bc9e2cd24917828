"""Fakes for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Clock:
    """A clock the test moves by hand (``clock.now += seconds``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StoredEvents:
    """The event store of :class:`FakeUnitOfWork`: what committed, by seq."""

    def __init__(self) -> None:
        self.by_seq: dict[int, Any] = {}
        self.ids: dict[tuple[str, str], int] = {}
        self.next_seq = 1
        #: Raise this from append when an event with this id is in the batch.
        self.poison: dict[str, BaseException] = {}


class _FakeEvents:
    def __init__(self, store: StoredEvents, staged: list[Any]) -> None:
        self._store = store
        self._staged = staged

    async def append(self, batch: Sequence[Any], stored_at: float) -> list[tuple[int, bool]]:
        out = []
        for event in batch:
            if event.id in self._store.poison:
                raise self._store.poison[event.id]
            key = (event.tenant, event.id)
            if key in self._store.ids:
                out.append((self._store.ids[key], False))
                continue
            seq = self._store.next_seq + len(self._staged)
            self._staged.append((key, seq, event))
            out.append((seq, True))
        return out


class FakeUnitOfWork:
    """A unit of work over :class:`StoredEvents`: appends land on commit only."""

    def __init__(self, store: StoredEvents) -> None:
        self._store = store
        self._staged: list[Any] = []
        self.events = _FakeEvents(store, self._staged)
        self.commits = 0

    async def __aenter__(self) -> FakeUnitOfWork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._staged.clear()

    async def commit(self) -> None:
        for key, seq, event in self._staged:
            self._store.ids[key] = seq
            self._store.by_seq[seq] = event
        self._store.next_seq += len(self._staged)
        self._staged.clear()

    async def rollback(self) -> None:
        self._staged.clear()
