"""Fakes for unit tests: a clock, and an in-memory database behind the
``UnitOfWork`` port (events, tasks, instances, audit).

:class:`FakeDatabase` keeps to the contracts in ``core/ports.py``,
``core/events/ports.py`` and ``core/agents/ports.py`` the way the SQL
adapters do: nothing is kept unless committed (a unit of work left without
``commit`` is rolled back), an event's (tenant, id) is stored once, rows
come back as they would from their columns (JSON round trip, fields that are
not stored dropped), a final task is never overwritten, a save or adopt only
touches the rows its owner condition matches. Values the database would
refuse (text over its column's length, a NUL character) raise
``InvalidArgument`` as the SQL unit of work translates them; ``outage``
makes every statement raise, as a database that is down does.

Statements do not yield to the event loop and transactions are serial: a
statement made while another unit of work holds uncommitted writes fails
the test (the fake does not model row locks). Event subscriptions,
pipelines and streams are not modelled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from datamcp.core.agents.model import AuditRecord, Task, TaskError, TaskState
from datamcp.core.agents.ports import POOL_OWNER, PoolClaim
from datamcp.core.errors import InvalidArgument, Unavailable
from datamcp.core.events.model import ALL_TENANTS, Event
from datamcp.core.instance_model import Instance, ListedAgent


class Clock:
    """A clock the test moves by hand (``clock.now += seconds``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


#: Column lengths of the events table (``adapters/sqlalchemy/tables.py``).
_EVENT_COLUMNS = {
    "tenant": 128,
    "id": 128,
    "source": 512,
    "type": 256,
    "subject": 512,
    "datacontenttype": 128,
    "correlation_id": 128,
    "traceparent": 128,
}


def outage() -> Unavailable:
    """What the SQL unit of work raises while the database is down."""
    return Unavailable("the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE")


def _not_storable(what: str) -> InvalidArgument:
    """What the SQL unit of work raises for a value the database refuses."""
    return InvalidArgument(
        f"a value could not be stored ({what})",
        reason="VALUE_NOT_STORABLE",
    )


class FakeDatabase:
    """The committed state of one database; every process of a test mesh
    (each its own bus and manager) may share it through :meth:`uow`."""

    def __init__(self) -> None:
        self.events: dict[int, Event] = {}
        self.event_seqs: dict[tuple[str, str], int] = {}
        self.stored_at: dict[int, float] = {}
        #: Like a database sequence: taken by an append, not given back on rollback.
        self.next_seq = 1
        self.tasks: dict[str, Task] = {}
        self.owners: dict[str, str] = {}
        self.instances: dict[str, Instance] = {}
        self.listed: dict[str, tuple[ListedAgent, float]] = {}
        self.audit: list[AuditRecord] = []
        #: When set, every statement raises it (the database is down).
        self.outage: BaseException | None = None
        #: Appending an event with one of these ids raises the exception (a
        #: fault in the middle of a statement).
        self.poison: dict[str, BaseException] = {}
        self.commits = 0
        self.rollbacks = 0
        self.writer: FakeUnitOfWork | None = None

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    # --- what tests read ------------------------------------------------------------

    def events_of(self, subject: str = "", tenant: str | None = None) -> list[Event]:
        """Stored events in seq order (of one subject, one tenant)."""
        return [
            e
            for _, e in sorted(self.events.items())
            if (not subject or e.subject == subject) and (tenant is None or e.tenant == tenant)
        ]

    def event_types(self, subject: str) -> list[str]:
        return [e.type for e in self.events_of(subject)]


class FakeUnitOfWork:
    """One transaction over a :class:`FakeDatabase`: statements apply at once
    with an undo entry each; ``commit`` keeps them, anything else undoes them."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self._undo: list[Callable[[], None]] = []
        self._open = False
        self.events = FakeEventRepository(self)
        self.tasks = FakeTaskRepository(self)
        self.instances = FakeInstanceRepository(self)
        self.audit = FakeAuditRepository(self)

    @property
    def db(self) -> FakeDatabase:
        return self._db

    async def __aenter__(self) -> FakeUnitOfWork:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._undo or self._db.writer is self:
            self._undo_all()
        self._open = False

    async def commit(self) -> None:
        self.statement()
        self._undo.clear()
        if self._db.writer is self:
            self._db.writer = None
        self._db.commits += 1

    async def rollback(self) -> None:
        self._undo_all()

    def statement(self) -> FakeDatabase:
        """Checks before a statement; the database to run it on."""
        assert self._open, "use the unit of work inside 'async with'"
        db = self._db
        assert db.writer in (None, self), (
            "the fake database runs transactions one at a time; another holds uncommitted writes"
        )
        if db.outage is not None:
            raise db.outage
        return db

    def wrote(self, undo: Callable[[], None]) -> None:
        self._db.writer = self
        self._undo.append(undo)

    def _undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()
        if self._db.writer is self:
            self._db.writer = None
            self._db.rollbacks += 1


def _put(table: dict[Any, Any], key: Any, value: Any) -> Callable[[], None]:
    """Set ``table[key]``; the function that puts back what was there."""
    missing = key not in table
    old = table.get(key)
    table[key] = value

    def undo() -> None:
        if missing:
            table.pop(key, None)
        else:
            table[key] = old

    return undo


def _pop(table: dict[Any, Any], key: Any) -> Callable[[], None]:
    old = table.pop(key)

    def undo() -> None:
        table[key] = old

    return undo


# --- events -------------------------------------------------------------------------


class FakeEventRepository:
    """The event-store part of ``EventRepository`` (no subscriptions)."""

    def __init__(self, tx: FakeUnitOfWork) -> None:
        self._tx = tx

    async def existing(self, tenant: str, ids: Sequence[str]) -> dict[str, int]:
        db = self._tx.statement()
        return {i: db.event_seqs[(tenant, i)] for i in ids if (tenant, i) in db.event_seqs}

    async def append(self, batch: Sequence[Event], stored_at: float) -> list[tuple[int, bool]]:
        db = self._tx.statement()
        keys = [(e.tenant, e.id) for e in batch]
        assert len(set(keys)) == len(keys), "(tenant, id) must be distinct within a batch"
        out: list[tuple[int, bool]] = []
        for event, key in zip(batch, keys, strict=True):
            if event.id in db.poison:
                raise db.poison[event.id]
            data = event.data_json()  # TypeError for data that is not JSON, as the adapter
            _check_event(event, data)
            if key in db.event_seqs:
                out.append((db.event_seqs[key], False))
                continue
            seq = db.next_seq
            db.next_seq += 1
            stored = dataclasses.replace(event, seq=seq, data=json.loads(data), data_text="")
            self._tx.wrote(_put(db.events, seq, stored))
            self._tx.wrote(_put(db.event_seqs, key, seq))
            self._tx.wrote(_put(db.stored_at, seq, stored_at))
            out.append((seq, True))
        return out

    async def read(
        self, tenant: str, after_seq: int, limit: int, since_time: float | None = None
    ) -> list[Event]:
        db = self._tx.statement()
        found = [
            e
            for seq, e in sorted(db.events.items())
            if seq > after_seq
            and tenant in (ALL_TENANTS, e.tenant)
            and (since_time is None or e.time >= since_time)
        ]
        return found[:limit]

    async def by_seqs(self, seqs: Sequence[int]) -> dict[int, Event]:
        db = self._tx.statement()
        return {s: db.events[s] for s in seqs if s in db.events}

    async def max_seq(self, tenant: str | None = None) -> int:
        db = self._tx.statement()
        return max((s for s, e in db.events.items() if tenant in (None, e.tenant)), default=0)


def _check_event(event: Event, data: str) -> None:
    for name, limit in _EVENT_COLUMNS.items():
        value = getattr(event, name)
        if len(value) > limit:
            raise _not_storable(f"{name} is over {limit} characters")
        if "\x00" in value:
            raise _not_storable(f"{name} has a NUL character")
    if "\x00" in data:
        raise _not_storable("data has a NUL character")


# --- tasks --------------------------------------------------------------------------


def _json(value: Any, text: str | None) -> Any:
    return None if value is None and text is None else json.loads(text or json.dumps(value))


def _as_stored(task: Task) -> Task:
    """A task as its row gives it back: input and result through JSON, the
    fields that are not stored (chain, caller_fault, cached JSON) dropped."""
    error = task.error
    return task.evolve(
        input=_json(task.input, task.input_json),
        result=None if task.result is None else _json(task.result, task.result_json),
        error=None if error is None else TaskError(error.reason, error.message, error.retryable),
        chain=(),
        input_json=None,
        result_json=None,
    )


def _best_first(tasks: list[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: (-t.priority, t.created_at))


class FakeTaskRepository:
    """``TaskRepository`` over the database's task rows and their owners."""

    def __init__(self, tx: FakeUnitOfWork) -> None:
        self._tx = tx

    async def insert(self, rows: Sequence[tuple[Task, str]]) -> None:
        db = self._tx.statement()
        for task, owner in rows:
            if task.id in db.tasks:
                continue  # ON CONFLICT DO NOTHING
            self._tx.wrote(_put(db.tasks, task.id, _as_stored(task)))
            self._tx.wrote(_put(db.owners, task.id, owner))

    async def save(self, tasks: Sequence[Task], owner: str) -> None:
        db = self._tx.statement()
        for task in tasks:
            row = db.tasks.get(task.id)
            if row is None or db.owners[task.id] != owner or row.state.final:
                continue
            new = _as_stored(task)
            changed = row.evolve(
                agent_id=new.agent_id,
                state=new.state,
                attempts=new.attempts,
                progress=new.progress,
                progress_message=new.progress_message,
                result=new.result,
                error=new.error,
                updated_at=new.updated_at,
                started_at=new.started_at,
                ended_at=new.ended_at,
            )
            self._tx.wrote(_put(db.tasks, task.id, changed))

    async def holders(self, ids: Sequence[str]) -> dict[str, tuple[str, TaskState]]:
        db = self._tx.statement()
        return {i: (db.owners[i], db.tasks[i].state) for i in ids if i in db.tasks}

    async def request_cancel(self, tenant: str, task_id: str, at: float) -> Task | None:
        db = self._tx.statement()
        row = db.tasks.get(task_id)
        if row is None or row.tenant != tenant or row.state.final:
            return None
        if not row.cancel_requested:
            row = row.evolve(cancel_requested=True)
            self._tx.wrote(_put(db.tasks, task_id, row))
        return row

    async def cancel_requests(self, owner: str) -> list[str]:
        db = self._tx.statement()
        return [
            i
            for i, t in db.tasks.items()
            if db.owners[i] == owner and not t.state.final and t.cancel_requested
        ]

    async def get(self, tenant: str, task_id: str) -> Task | None:
        db = self._tx.statement()
        row = db.tasks.get(task_id)
        return row if row is not None and row.tenant == tenant else None

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
        db = self._tx.statement()
        found = [
            t
            for t in db.tasks.values()
            if t.tenant == tenant
            and (not states or t.state in states)
            and (not capability or t.capability == capability)
            and (not correlation_id or t.correlation_id == correlation_id)
            and (before is None or (t.created_at, t.id) < before)
        ]
        found.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return found[:limit]

    async def owners_of_unfinished(self) -> list[str]:
        db = self._tx.statement()
        return sorted({db.owners[i] for i, t in db.tasks.items() if not t.state.final})

    async def adopt(
        self, owner: str, from_owners: Sequence[str], ids: Sequence[str] = ()
    ) -> list[Task]:
        db = self._tx.statement()
        picked = [
            t
            for i, t in db.tasks.items()
            if db.owners[i] in from_owners and not t.state.final and (not ids or i in ids)
        ]
        return self._take(owner, picked)

    async def claim_pooled(self, owner: str, want: PoolClaim, now: float) -> list[Task]:
        db = self._tx.statement()
        picked = [
            t
            for i, t in db.tasks.items()
            if db.owners[i] == POOL_OWNER
            and t.state is TaskState.QUEUED
            and t.deadline > now
            and (
                (t.pinned and t.agent_id == want.agent_id)
                or (not t.pinned and t.capability in want.capabilities)
            )
            and (want.tenants is None or t.tenant in want.tenants)
            and t.tenant not in want.excluded
        ]
        return self._take(owner, _pool_order(picked)[: want.limit])

    async def claim_expired(self, owner: str, now: float, limit: int) -> list[Task]:
        db = self._tx.statement()
        picked = [
            t
            for i, t in db.tasks.items()
            if db.owners[i] == POOL_OWNER and t.state is TaskState.QUEUED and t.deadline <= now
        ]
        return self._take(owner, _pool_order(picked)[:limit])

    async def pooled_targets(self) -> list[tuple[bool, str]]:
        db = self._tx.statement()
        targets = {
            (True, t.agent_id) if t.pinned else (False, t.capability)
            for i, t in db.tasks.items()
            if db.owners[i] == POOL_OWNER and t.state is TaskState.QUEUED
        }
        return sorted(targets)

    def _take(self, owner: str, tasks: list[Task]) -> list[Task]:
        for task in tasks:
            self._tx.wrote(_put(self._tx.db.owners, task.id, owner))
        return _best_first(tasks)


def _pool_order(tasks: list[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))


# --- instances and audit ------------------------------------------------------------


class FakeInstanceRepository:
    def __init__(self, tx: FakeUnitOfWork) -> None:
        self._tx = tx

    async def add(self, instance: Instance) -> None:
        db = self._tx.statement()
        assert instance.id not in db.instances, "duplicate primary key"
        self._tx.wrote(_put(db.instances, instance.id, instance))

    async def touch(self, instance_id: str, at: float) -> None:
        self._change(instance_id, heartbeat_at=at)

    async def stop(self, instance_id: str, at: float) -> None:
        self._change(instance_id, stopped_at=at)

    async def get(self, instance_id: str) -> Instance | None:
        return self._tx.statement().instances.get(instance_id)

    async def prune(self, before: float, keep: str) -> int:
        db = self._tx.statement()
        gone = [i for i, inst in db.instances.items() if inst.heartbeat_at < before and i != keep]
        for instance_id in gone:
            self._tx.wrote(_pop(db.instances, instance_id))
        for agent_id in [a for a, (la, _) in db.listed.items() if la.instance_id in gone]:
            self._tx.wrote(_pop(db.listed, agent_id))
        return len(gone)

    async def list_agent(self, instance_id: str, agent_id: str, descriptor: str, at: float) -> None:
        db = self._tx.statement()
        assert agent_id not in db.listed, "duplicate primary key"
        self._tx.wrote(
            _put(db.listed, agent_id, (ListedAgent(agent_id, instance_id, descriptor), at))
        )

    async def unlist_agent(self, agent_id: str) -> None:
        db = self._tx.statement()
        if agent_id in db.listed:
            self._tx.wrote(_pop(db.listed, agent_id))

    async def listed_agents(self, alive_since: float) -> list[ListedAgent]:
        db = self._tx.statement()
        out = []
        for listed, _ in db.listed.values():
            inst = db.instances.get(listed.instance_id)
            if inst is not None and inst.stopped_at is None and inst.heartbeat_at >= alive_since:
                out.append(listed)
        return out

    def _change(self, instance_id: str, **changes: Any) -> None:
        db = self._tx.statement()
        if instance_id in db.instances:
            new = dataclasses.replace(db.instances[instance_id], **changes)
            self._tx.wrote(_put(db.instances, instance_id, new))


class FakeAuditRepository:
    def __init__(self, tx: FakeUnitOfWork) -> None:
        self._tx = tx

    async def add(self, records: Sequence[AuditRecord]) -> None:
        db = self._tx.statement()

        def undo() -> None:
            db.audit.pop()

        for record in records:
            db.audit.append(record)
            self._tx.wrote(undo)

    async def page(
        self,
        tenant: str,
        *,
        correlation_id: str,
        agent_id: str,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[AuditRecord]:
        db = self._tx.statement()
        found = [
            r
            for r in db.audit
            if r.tenant == tenant
            and (not correlation_id or r.correlation_id == correlation_id)
            and (not agent_id or agent_id in (r.source_agent_id, r.target_agent_id))
            and (before is None or (r.started_at, r.id) < before)
        ]
        found.sort(key=lambda r: (r.started_at, r.id), reverse=True)
        return found[:limit]
