"""Stream jobs as a service: create, get, list, delete, push, and the
supervisor that keeps every job running in exactly one process.

Ownership is a lease on the job row (``owner``, ``lease_until``): a
process runs the jobs it holds and renews them with every checkpoint; a job
whose lease ran out (its process died) is claimed by the next process that
looks, which resumes from the last checkpoint. Checkpoints are fenced by
ownership, so a process that lost a job cannot write it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core import paging
from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from datamcp.core.events.api import EventsApi
from datamcp.core.events.model import Event, EventFilter, new_event
from datamcp.core.ports import UnitOfWorkFactory
from datamcp.core.streams.model import RECORDS_PUSHED, StreamJob, StreamSpec, validate
from datamcp.core.streams.records import Prepared, RecordReader
from datamcp.core.streams.runner import JobRunner, StreamTotals

log = logging.getLogger(__name__)

#: Deliveries of a job's subscription are retried this often before they
#: are dead-lettered (each retry is a restart from the last checkpoint).
SUBSCRIPTION_ATTEMPTS = 100
#: Rejections listed in a PushRecords answer (all are counted).
MAX_LISTED_REJECTIONS = 100
#: Publishes of one PushRecords call in flight at once (they group-commit).
PUSH_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class PushMessage:
    job_id: str
    records: Sequence[Any]
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class RecordRejection:
    index: int
    field: str
    description: str


@dataclass(slots=True)
class PushSummary:
    accepted: int = 0
    rejected: int = 0
    rejections: list[RecordRejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    lease: float = 6.0
    poll_interval: float = 0.5
    batch: int = 500
    max_jobs_per_tenant: int = 100


class StreamService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        events: EventsApi,
        owner: str,
        *,
        policy: StreamPolicy | None = None,
        max_event_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uow = uow
        self._events = events
        self._owner = owner
        self.policy = policy or StreamPolicy()
        self._max_bytes = max_event_bytes
        self._clock = clock
        self._runners: dict[str, tuple[JobRunner, asyncio.Task[None]]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False
        self.totals = StreamTotals()
        self._restarts = 0

    # --- API --------------------------------------------------------------------

    async def create(
        self, tenant: str, name: str, spec: StreamSpec, request_id: str = ""
    ) -> tuple[StreamJob, bool]:
        """Validate, store and start a job. Returns (job, duplicate).

        Raises:
            InvalidArgument: field violations; nothing is stored.
            FailedPrecondition: the destination table cannot be used, or the
                tenant has too many jobs.
        """
        validate(name, spec)
        if len(request_id) > 128:
            raise InvalidArgument(
                "request_id too long", [FieldViolation("request_id", "at most 128 characters")]
            )
        async with self._uow() as tx:
            if request_id:
                found = await tx.streams.by_request(tenant, request_id)
                if found is not None:
                    return found, True
            count = len(await tx.streams.page(tenant, None, self.policy.max_jobs_per_tenant))
        if count >= self.policy.max_jobs_per_tenant:
            raise FailedPrecondition(
                f"the tenant has {count} stream jobs, the most allowed "
                "(streams.max_jobs_per_tenant); delete one first",
                reason="TOO_MANY_STREAM_JOBS",
            )
        now = self._clock()
        if spec.sink.table:
            async with self._uow() as tx:
                await tx.streams.ensure_table(tenant, spec.sink.table, now)
                await tx.commit()
        job = StreamJob(uuid.uuid4().hex, tenant, name, spec, now, request_id)
        # The subscription first: records pushed (or events published) once the
        # job is visible are never missed.
        sub = await self._events.subscriptions.ensure(
            tenant,
            job.subscription,
            self._filter(job),
            from_earliest=spec.source is not None and spec.source.from_earliest,
            max_attempts=SUBSCRIPTION_ATTEMPTS,
            visibility_timeout=self.policy.lease,
            # One runner consumes it and windows by event time: the bus's
            # per-subject serialisation would cap a one-subject source at one
            # event per checkpoint.
            ordered=False,
        )
        try:
            async with self._uow() as tx:
                stored = await tx.streams.insert(job, self._owner, now + self.policy.lease)
                await tx.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._events.subscriptions.delete(tenant, sub.name)
            raise
        if not stored:  # a concurrent create with the same request_id won
            with contextlib.suppress(Exception):
                await self._events.subscriptions.delete(tenant, sub.name)
            async with self._uow() as tx:
                winner = await tx.streams.by_request(tenant, request_id)
            if winner is None:  # pragma: no cover - insert refused only on that conflict
                raise FailedPrecondition("stream job could not be stored; retry")
            return winner, True
        if self._started:
            self._launch(job)
        return job, False

    @staticmethod
    def _filter(job: StreamJob) -> EventFilter:
        src = job.spec.source
        if src is None:
            return EventFilter((RECORDS_PUSHED,), job.source_uri, "")
        return EventFilter.build(src.types, src.source, src.subject)

    async def get(self, tenant: str, job_id: str) -> StreamJob:
        async with self._uow() as tx:
            job = await tx.streams.get(tenant, job_id) if job_id else None
        if job is None:
            raise NotFound(
                f"stream job {job_id!r} does not exist",
                reason="STREAM_JOB_NOT_FOUND",
                metadata={"job_id": job_id},
            )
        return job

    async def page(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[StreamJob], str]:
        size = paging.page_size(page_size)
        after = paging.keyset(page_token)
        async with self._uow() as tx:
            jobs = await tx.streams.page(tenant, after, size)
        token = paging.encode([jobs[-1].created_at, jobs[-1].id]) if len(jobs) == size else ""
        return jobs, token

    async def delete(self, tenant: str, job_id: str) -> None:
        """Stop the job here (others are fenced at their next step), drop its
        state and its subscription. Results already emitted stay."""
        job = await self.get(tenant, job_id)
        # The row first: no claim can hand the job out again, and a runner
        # anywhere is fenced at its next step.
        async with self._uow() as tx:
            await tx.streams.delete(tenant, job.id)
            await tx.commit()
        entry = self._runners.pop(job.id, None)
        if entry is not None:
            await cancel_and_wait(entry[1])
        with contextlib.suppress(NotFound):
            await self._events.subscriptions.delete(tenant, job.subscription)

    async def push(self, tenant: str, messages: AsyncIterator[PushMessage]) -> PushSummary:
        """Check pushed records and store the good ones durably for the job.

        Each message becomes one or more ``stream.records.pushed`` events
        (their count of rejected records rides along, so the job's counters
        stay exact). With a ``request_id`` the event ids are derived from it,
        so a resent message is stored once. Returns after every accepted
        record is durable.

        Raises:
            InvalidArgument: no job id, or the job id changed mid-stream.
            NotFound / FailedPrecondition: unknown job, or not a push job.
        """
        summary = PushSummary()
        job: StreamJob | None = None
        reader: RecordReader | None = None
        index = 0
        pending: set[asyncio.Task[Any]] = set()
        try:
            async for message in messages:
                if job is None:
                    if not message.job_id:
                        raise InvalidArgument(
                            "the first message must name the job",
                            [FieldViolation("job_id", "required in the first message")],
                        )
                    job = await self.get(tenant, message.job_id)
                    if not job.spec.pushed:
                        raise FailedPrecondition(
                            f"stream job {job.id} reads bus events; push to a job created "
                            "with a push source",
                            reason="NOT_A_PUSH_JOB",
                        )
                    reader = RecordReader(job.spec)
                elif message.job_id and message.job_id != job.id:
                    raise InvalidArgument(
                        "one PushRecords stream feeds one job",
                        [FieldViolation("job_id", f"must be {job.id} or empty")],
                    )
                assert reader is not None
                if len(message.request_id) > 64:
                    raise InvalidArgument(
                        "request_id too long",
                        [FieldViolation("request_id", "at most 64 characters")],
                    )
                now = self._clock()
                good: list[Any] = []
                bad = 0
                for record in message.records:
                    result = reader.read(record, now)
                    if isinstance(result, Prepared):
                        good.append(record)
                    else:
                        bad += 1
                        if len(summary.rejections) < MAX_LISTED_REJECTIONS:
                            path = f"records[{index}]" + (
                                f".{result.field}" if result.field else ""
                            )
                            summary.rejections.append(
                                RecordRejection(index, path, result.description)
                            )
                    index += 1
                summary.accepted += len(good)
                summary.rejected += bad
                events = self._push_events(job, message.request_id, good, bad, now)
                if events:
                    if len(pending) >= PUSH_IN_FLIGHT:
                        done, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            task.result()
                    pending.add(asyncio.ensure_future(self._events.bus.publish(events)))
            if pending:
                await asyncio.gather(*pending)
                pending.clear()
        finally:
            for task in pending:
                task.cancel()
        if job is None:
            raise InvalidArgument(
                "no message was pushed", [FieldViolation("job_id", "send at least one message")]
            )
        return summary

    def _push_events(
        self, job: StreamJob, request_id: str, good: list[Any], bad: int, now: float
    ) -> list[Event]:
        if not good and not bad:
            return []
        limit = int(self._max_bytes * 0.9)
        chunks: list[list[Any]] = [[]]
        size = 0
        for record in good:
            n = len(json.dumps(record, separators=(",", ":")))
            if chunks[-1] and size + n > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(record)
            size += n
        base = ""
        if request_id:
            base = hashlib.sha256(f"{job.id}\x00{request_id}".encode()).hexdigest()[:40]
        return [
            new_event(
                type=RECORDS_PUSHED,
                source=job.source_uri,
                tenant=job.tenant,
                id=f"push:{base}:{i}" if base else None,
                time_=now,
                correlation_id=job.id,
                max_data_bytes=max(self._max_bytes, size + 64) * 2,
                data={"records": chunk, "rejected": bad if i == 0 else 0},
            )
            for i, chunk in enumerate(chunks)
        ]

    # --- running ----------------------------------------------------------------

    async def start(self) -> None:
        """Claim this process's jobs (and orphans) now, then keep looking."""
        self._started = True
        with contextlib.suppress(Exception):
            await self._claim()
        self._supervisor = asyncio.create_task(self._supervise(), name="stream-supervisor")

    async def stop(self) -> None:
        """Stop every runner (uncommitted work is simply redone by the next
        owner) and hand the leases back so a restart resumes at once."""
        self._started = False
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        runners, self._runners = self._runners, {}
        await cancel_and_wait(*(task for _, task in runners.values()))
        if runners:
            with contextlib.suppress(Exception):
                async with self._uow() as tx:
                    await tx.streams.release(self._owner, list(runners))
                    await tx.commit()

    @property
    def running(self) -> list[str]:
        return [job_id for job_id, (_, task) in self._runners.items() if not task.done()]

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.policy.lease / 3)
            try:
                await self._claim()
            except Exception:
                log.warning("stream job claim failed; retrying", exc_info=True)

    async def _claim(self) -> None:
        now = self._clock()
        async with self._uow() as tx:
            held = await tx.streams.claim(self._owner, now, now + self.policy.lease)
            await tx.commit()
        for job in held:
            self._launch(job)

    def _launch(self, job: StreamJob) -> None:
        entry = self._runners.get(job.id)
        if entry is not None and not entry[1].done():
            return  # one runner per job per process: two would clobber each other's state
        p = self.policy
        runner = JobRunner(
            job,
            uow=self._uow,
            subscriptions=self._events.subscriptions,
            bus=self._events.bus,
            owner=self._owner,
            lease=p.lease,
            poll_interval=p.poll_interval,
            batch=p.batch,
            totals=self.totals,
            clock=self._clock,
        )
        task = asyncio.create_task(runner.run(), name=f"stream-job:{job.id}")
        self._runners[job.id] = (runner, task)

        def forget(done: asyncio.Task[None]) -> None:
            self._restarts += runner.restarts
            entry = self._runners.get(job.id)
            if entry is not None and entry[1] is done:
                del self._runners[job.id]

        task.add_done_callback(forget)

    def metrics(self) -> dict[str, float]:
        """This process's stream jobs, for the ``pipelines`` metrics section:
        jobs running here, and what their checkpoints committed since start."""
        t = self.totals
        live = sum(r.restarts for r, task in self._runners.values() if not task.done())
        return {
            "stream_jobs_running": float(len(self.running)),
            "stream_job_restarts": float(self._restarts + live),
            "stream_records_accepted": float(t.records_accepted),
            "stream_records_late": float(t.records_late),
            "stream_records_rejected": float(t.records_rejected),
            "stream_windows_emitted": float(t.windows_emitted),
            "stream_checkpoints": float(t.checkpoints),
            "stream_idle_flushes": float(t.idle_flushes),
        }
