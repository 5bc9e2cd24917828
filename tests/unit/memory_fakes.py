"""In-memory fakes of the memory ports (a store and the sync ledger), faithful
to the contracts: seq numbers per store, copies on read and write, checkpoints,
history, rollback unless committed."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from datamcp.core.memory.model import Conflict, ConflictStatus, Record, SyncRun, in_prefix


class FakeStoreTx:
    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self._records = dict(store.records)
        self._history = {k: list(v) for k, v in store.history_rows.items()}
        self._checkpoints = dict(store.checkpoints)
        self._seq = store.seq

    async def get_many(
        self, tenant: str, idents: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Record]:
        out = {}
        for ns, key in idents:
            r = self._records.get((tenant, ns, key))
            if r is not None:
                out[(ns, key)] = copy.deepcopy(r)
        return out

    async def write(
        self, records: Sequence[Record], replaced: Sequence[Record], history_depth: int
    ) -> None:
        for r in records:
            if (failure := self._store.poison.get(r.key)) is not None:
                raise failure
        for r in replaced:
            if history_depth:
                rows = self._history.setdefault((r.tenant, r.namespace, r.key), [])
                rows.append(copy.deepcopy(r))
                rows.sort(key=lambda x: x.hlc, reverse=True)
                del rows[history_depth:]
        for r in records:
            self._seq += 1
            r.seq = self._seq
            r.via = r.via or self._store.id
            self._records[(r.tenant, r.namespace, r.key)] = copy.deepcopy(r)

    async def set_checkpoint(self, replication: str, seq: int) -> None:
        self._checkpoints[replication] = seq

    async def commit(self) -> None:
        s = self._store
        s.records, s.history_rows, s.checkpoints, s.seq = (
            self._records,
            self._history,
            self._checkpoints,
            self._seq,
        )


class FakeStore:
    def __init__(self, store_id: str, *, primary: bool = False) -> None:
        #: Writing a record with one of these keys raises the exception.
        self.poison: dict[str, BaseException] = {}
        self._id = store_id
        self._primary = primary
        self.records: dict[tuple[str, str, str], Record] = {}
        self.history_rows: dict[tuple[str, str, str], list[Record]] = {}
        self.checkpoints: dict[str, int] = {}
        self.seq = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def primary(self) -> bool:
        return self._primary

    @property
    def url(self) -> str:
        return f"memory://{self._id}"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeStoreTx]:
        yield FakeStoreTx(self)

    async def get(self, tenant: str, namespace: str, key: str) -> Record | None:
        r = self.records.get((tenant, namespace, key))
        return copy.deepcopy(r) if r is not None else None

    async def changes(
        self,
        tenant: str,
        after: int,
        limit: int,
        prefix: str = "",
        skip_via: str = "",
        *,
        versions: bool = False,
    ) -> tuple[list[Record], int]:
        rows = list(self.records.values())
        if versions:
            rows += [r for older in self.history_rows.values() for r in older]
        feed = sorted(
            (r for r in rows if r.tenant == tenant and r.seq > after), key=lambda r: r.seq
        )[:limit]
        if not feed:
            return [], after
        keep = [
            copy.deepcopy(r)
            for r in feed
            if in_prefix(r.namespace, prefix) and (not skip_via or r.via != skip_via)
        ]
        return keep, feed[-1].seq

    async def pending(self, tenant: str, after: int) -> int:
        return sum(1 for r in self.records.values() if r.tenant == tenant and r.seq > after)

    async def scan(
        self, tenant: str, prefix: str, after: tuple[str, str] | None, limit: int
    ) -> list[Record]:
        rows = sorted(
            (
                r
                for r in self.records.values()
                if r.tenant == tenant
                and in_prefix(r.namespace, prefix)
                and (after is None or r.ident > after)
            ),
            key=lambda r: r.ident,
        )
        return [copy.deepcopy(r) for r in rows[:limit]]

    async def history(self, tenant: str, namespace: str, key: str, limit: int) -> list[Record]:
        return copy.deepcopy(self.history_rows.get((tenant, namespace, key), [])[:limit])

    async def checkpoint(self, replication: str) -> int:
        return self.checkpoints.get(replication, 0)

    async def set_checkpoint(self, replication: str, seq: int) -> None:
        self.checkpoints[replication] = seq

    async def stats(self, tenant: str) -> tuple[int, int]:
        mine = [r for r in self.records.values() if r.tenant == tenant]
        return max((r.seq for r in mine), default=0), len(mine)


class FakeLedger:
    def __init__(self) -> None:
        self.runs: dict[str, SyncRun] = {}
        self.conflicts: dict[str, Conflict] = {}
        self.schedules: dict[str, float] = {}

    async def add_run(self, run: SyncRun) -> None:
        self.runs[run.id] = copy.deepcopy(run)

    async def save_run(self, run: SyncRun) -> None:
        self.runs[run.id] = copy.deepcopy(run)

    async def get_run(self, tenant: str, run_id: str) -> SyncRun | None:
        run = self.runs.get(run_id)
        return copy.deepcopy(run) if run is not None and run.tenant == tenant else None

    async def list_runs(
        self, tenant: str, before: tuple[float, str] | None, limit: int
    ) -> list[SyncRun]:
        runs = sorted(
            (r for r in self.runs.values() if r.tenant == tenant),
            key=lambda r: (r.started_at, r.id),
            reverse=True,
        )
        if before is not None:
            runs = [r for r in runs if (r.started_at, r.id) < before]
        return runs[:limit]

    async def running_runs(self) -> list[SyncRun]:
        return [r for r in self.runs.values() if not r.status.final]

    async def add_conflicts(self, conflicts: Sequence[Conflict]) -> int:
        new = 0
        for c in conflicts:
            if c.id not in self.conflicts:
                self.conflicts[c.id] = copy.deepcopy(c)
                new += 1
        return new

    async def get_conflict(self, tenant: str, conflict_id: str) -> Conflict | None:
        c = self.conflicts.get(conflict_id)
        return copy.deepcopy(c) if c is not None and c.tenant == tenant else None

    async def list_conflicts(
        self,
        tenant: str,
        status: ConflictStatus,
        prefix: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[Conflict]:
        found = [
            c
            for c in self.conflicts.values()
            if c.tenant == tenant
            and status in (ConflictStatus.UNSPECIFIED, c.status)
            and in_prefix(c.namespace, prefix)
        ]
        return sorted(found, key=lambda c: (c.detected_at, c.id), reverse=True)[:limit]

    async def pending_for_key(self, tenant: str, namespace: str, key: str) -> list[Conflict]:
        return [
            c
            for c in self.conflicts.values()
            if (c.tenant, c.namespace, c.key) == (tenant, namespace, key)
            and c.status == ConflictStatus.PENDING
        ]

    async def mark_resolved(self, tenant: str, ids: Sequence[str], winner: str, at: float) -> None:
        for i in ids:
            c = self.conflicts[i]
            c.status, c.winner, c.resolved_at = ConflictStatus.RESOLVED, winner, at

    async def claim_schedule(self, name: str, due: float) -> bool:
        if self.schedules.get(name, -1.0) >= due:
            return False
        self.schedules[name] = due
        return True
