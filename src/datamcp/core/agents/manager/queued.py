"""Queued execution on the manager's parts: sending a task to the queue and
storing it, and running a task a queue delivered (claiming it exactly once).
How queued tasks are owned and named is in ``datamcp.core.agents.queued``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from datamcp.core.agents.manager.parts import TaskCore
from datamcp.core.agents.model import Task, TaskError, TaskSpec, TaskState, task_id_for
from datamcp.core.agents.queued import (
    CLAIM_OWNER_PREFIX,
    QueuedTask,
    TaskQueue,
    queue_owner,
)
from datamcp.core.agents.registry import AgentSlot
from datamcp.core.errors import (
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unavailable,
)
from datamcp.core.events.model import Event
from datamcp.core.ports import UnitOfWork, Write, WriteOp


@dataclass(eq=False, slots=True)
class _Claim:
    """Taking one task: its row changes from one of ``sources`` to ``owner``.

    With a ``slot`` (reserved before the commit), a won task is marked RUNNING
    on it in the same commit, with its ``task.started`` event.
    """

    task_id: str
    sources: tuple[str, ...]
    owner: str
    slot: AgentSlot | None = None
    now: float = 0.0
    #: With a slot: the events of the RUNNING row inserted under the token,
    #: stored when that insert is what the claim takes.
    inserted_events: tuple[Event, ...] = ()
    task: Task | None = None
    started: bool = False


class QueuedTasks:
    """The queued side of an ``AgentManager`` (``manager.queued_tasks``)."""

    def __init__(self, core: TaskCore) -> None:
        self._core = core
        #: Set by bootstrap when ``agents.task_queue_url`` is configured.
        self.queue: TaskQueue | None = None
        #: The longest timeout a queued task may have (``agents.task_queue_max_timeout``,
        #: set by bootstrap): the consumer is a function with a timeout of its own.
        self.max_timeout: float | None = None
        self._insert = WriteOp("tasks.insert_owned", 0, _apply_owned_insert)
        self._claim = WriteOp("tasks.claim", 1, self._apply_claims)

    # --- the sending side (SubmitTask with EXECUTION_MODE_QUEUED) -------------------

    async def submit(self, tenant: str, spec: TaskSpec) -> tuple[Task, bool]:
        """Validate, send to the queue, then store the task (PENDING, owned by
        the queue). Returns (task, duplicate), like ``AgentManager.submit``.

        Raises:
            FailedPrecondition: no task queue is configured.
            InvalidArgument: as ``AgentManager.submit``; nothing is sent.
            Unavailable: the queue or the store cannot be written.
        """
        core = self._core
        queue = self.queue
        if queue is None:
            raise FailedPrecondition(
                "queued execution is not configured on this server (agents.task_queue_url)",
                reason="NO_TASK_QUEUE",
            )
        # The request id names the task across processes (see the module doc).
        spec = replace(spec, request_id=spec.request_id or f"queued:{uuid.uuid4().hex}")
        self._check_fits(spec)
        checked = core.validator.check(tenant, spec, self.max_timeout)
        task_id = task_id_for(tenant, spec.request_id)
        stored = await self._stored(tenant, task_id)
        if stored is not None:
            return stored, True
        task = core.validator.new_task(tenant, spec, checked, task_id=task_id, now=core.clock())
        await queue.send(
            QueuedTask(
                tenant, replace(spec, capability=checked.capability, timeout=checked.timeout)
            )
        )
        (result,) = await core.recorder.publish(
            [core.recorder.event(task, "task.submitted")],
            [Write(self._insert, (task, queue_owner(task_id)))],
        )
        if result.duplicate:  # a consumer stored (and maybe ran) it first
            return (await self._stored(tenant, task_id)) or task, True
        return task, False

    # --- the consuming side (the Lambda tasks handler) ------------------------------

    async def run(self, message: QueuedTask, *, within: float) -> tuple[Task, bool]:
        """Run a queued task to its final state in this process, within ``within``
        seconds. Returns (task, duplicate): duplicate when the task had already
        ended (a redelivery) or another live process is running it, so nothing
        was done here.

        Raises:
            InvalidArgument: the task can never run (bad input, unknown
                capability) and nothing is stored for it.
            Conflict: a live process holds it but is not running it (it
                handed the task back, queued it, or is storing it); try again
                later. A task a live process is RUNNING returns (task, True):
                a duplicate delivery of a task in progress is done.
            DeadlineExceeded: it did not end within ``within``; call
                :meth:`release` before the process freezes so that a
                redelivery can run it again.
            Unavailable: the store cannot be written.
        """
        core = self._core
        tenant, spec = message.tenant, message.spec
        task_id = message.task_id
        if task_id not in core.live:
            mine, ended = await self._own(tenant, spec, task_id)
            if mine is not None and mine.state.final:
                return mine, ended
            if mine is not None and task_id not in core.live:
                core.runner.recover(mine)
            if task_id not in core.live:
                await core.lifecycle.adopt_orphans(own_too=True)
            if task_id not in core.live:
                held = await self._stored(tenant, task_id)
                if held is not None and (held.state.final or held.state is TaskState.RUNNING):
                    # Not adoptable, so its owner is live, and it is RUNNING
                    # there: this copy's effect (the task) exists and will end.
                    # Should the owner die, its own delivery or the servers'
                    # orphan recovery re-runs it, so this copy is done.
                    return held, True
                raise Conflict(
                    f"task {task_id} is running in another live process; retry later",
                    reason="TASK_BUSY",
                )
        task = await core.queries.wait(tenant, task_id, within)
        if not task.state.final:
            raise DeadlineExceeded(
                f"task {task_id} is still {task.state.name} with the invocation's time used up",
                reason="TASK_NOT_FINISHED",
                metadata={"task_id": task_id},
            )
        return task, False

    async def _own(self, tenant: str, spec: TaskSpec, task_id: str) -> tuple[Task | None, bool]:
        """Store the task as ours, or claim it from the queue, and start it on a
        free agent, in one commit. Returns (task, ended before): the task when
        it is ours (running when an agent was free) or has ended, None when
        someone else holds it."""
        core = self._core
        try:
            self._check_fits(spec)
            checked = core.validator.check(tenant, spec, self.max_timeout)
        except InvalidArgument as exc:
            return await self._fail_invalid(tenant, task_id, exc)
        now = core.clock()
        task = core.validator.new_task(tenant, spec, checked, task_id=task_id, now=now)
        # The insert lands under an owner only this delivery knows, so the claim
        # in the same commit tells "my insert landed" from "stored before".
        token = CLAIM_OWNER_PREFIX + uuid.uuid4().hex[:30]
        by_agent, target = (True, task.agent_id) if task.pinned else (False, task.capability)
        slot = core.registry.select(target, tenant, by_agent=by_agent)
        claim = _Claim(task_id, (token, queue_owner(task_id)), core.instance.id, slot, now)
        row = task
        if slot is not None:
            slot.in_flight += 1  # reserved until the commit says whether we run it
            # New rows go in RUNNING on it: if this insert lands, the task is
            # ours and started in this one commit, and its events are new.
            row = _running(task, slot, now)
            claim.inserted_events = (
                core.recorder.event(task, "task.submitted"),
                core.recorder.event(row, "task.started"),
            )
        try:
            await core.recorder.publish(
                [], [Write(self._insert, (row, token)), Write(self._claim, claim)]
            )
        except BaseException:
            claim.task, claim.started = None, False  # rolled back (or unknown: see run())
            raise
        finally:
            if slot is not None and not claim.started:
                core.placement.release(slot)
        if claim.task is not None:
            if claim.started and slot is not None:
                core.runner.run_started(claim.task, slot)
            return claim.task, False
        stored = await self._stored(tenant, task_id)
        if stored is None:
            raise Unavailable(f"task {task_id} was neither stored nor found; retry")
        return (stored, True) if stored.state.final else (None, False)

    def _check_fits(self, spec: TaskSpec) -> None:
        """A queued task must be able to end within one invocation of the
        consuming function; one that cannot would be handed back, redelivered
        and restarted from zero until it lands in the dead letters. A task
        without a timeout gets the limit (the validator's ``wait_limit``).

        Raises:
            InvalidArgument: reason ``TIMEOUT_EXCEEDS_QUEUE``.
        """
        limit = self.max_timeout
        if limit is None or spec.timeout is None or spec.timeout <= limit:
            return
        raise InvalidArgument(
            "the task cannot finish within the queue's function; nothing was stored",
            [
                FieldViolation(
                    "task.timeout",
                    f"{spec.timeout:g}s is over the {limit:g}s a queued task may take "
                    "(agents.task_queue_max_timeout: the tasks function's timeout less its "
                    "margin); shorten it or submit the task in-process",
                )
            ],
            reason="TIMEOUT_EXCEEDS_QUEUE",
        )

    async def _fail_invalid(
        self, tenant: str, task_id: str, exc: InvalidArgument
    ) -> tuple[Task, bool]:
        """A task the sender accepted but this process cannot run (its agents
        differ): fail it so it does not wait forever. Nothing stored: re-raise."""
        core = self._core
        stored = await self._stored(tenant, task_id)
        if stored is None:
            raise exc
        if stored.state.final:
            return stored, True
        claim = _Claim(task_id, (queue_owner(task_id),), core.instance.id)
        await core.recorder.publish([], [Write(self._claim, claim)])
        if claim.task is None:
            raise Conflict(f"task {task_id} is held by another process", reason="TASK_BUSY")
        detail = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
        now = core.clock()
        failed = claim.task.evolve(
            state=TaskState.FAILED,
            error=TaskError(exc.reason, f"{exc.message}: {detail}"),
            ended_at=now,
            updated_at=now,
        )
        await core.recorder.store_final(failed)
        return failed, False

    async def settle(self, within: float) -> int:
        """Wait up to ``within`` seconds for every task of this process to end
        (tasks a Lambda invocation started, for example through a trigger
        action); returns how many are still unfinished."""
        live = self._core.live
        waiting = [asyncio.ensure_future(t.done.wait()) for t in live.unfinished()]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=within)
            for future in pending:
                future.cancel()
        return len(live.unfinished())

    async def release(self) -> int:
        """Interrupt every unfinished task of this process and store it back as
        QUEUED (still ours: once this process is gone, a redelivery or a
        server's orphan recovery takes it over). Call it before a Lambda
        invocation returns with work unfinished: a frozen process must not
        hold running tasks. Returns how many were handed back."""
        back = await self._core.lifecycle.hand_back()
        for live in back:
            self._core.live.forget(live)
            live.done.set()
            live.notify()
        return len(back)

    async def _apply_claims(self, tx: UnitOfWork, claims: Sequence[_Claim]) -> None:
        """Take the claimed tasks: one conditional UPDATE per new owner for all
        the claims of a commit. A won task with a reserved agent is stored
        RUNNING on it right away; the events of won tasks (``task.submitted``
        unless stored before, ``task.started``) are appended in this same
        transaction, so nothing is announced for a claim that lost."""
        core = self._core
        first: dict[str, _Claim] = {}
        for claim in claims:  # copies of one task in one commit: the first takes it
            first.setdefault(claim.task_id, claim)
        by_owner: dict[str, list[_Claim]] = {}
        for claim in first.values():
            by_owner.setdefault(claim.owner, []).append(claim)
        for owner, group in by_owner.items():
            sources = [source for claim in group for source in claim.sources]
            ids = [claim.task_id for claim in group]
            won = {t.id: t for t in await tx.tasks.adopt(owner, sources, ids)}
            for claim in group:
                claim.task = won.get(claim.task_id)
        running: list[Task] = []
        # Per won claim, its events in order.
        ordered: list[Event] = []
        for claim in first.values():
            task, slot = claim.task, claim.slot
            if task is None:
                continue
            if slot is not None and task.state is TaskState.RUNNING:
                # Our RUNNING insert (a queue-owned row is always PENDING).
                claim.started = True
                ordered.extend(claim.inserted_events)
                continue
            ordered.append(core.recorder.event(task, "task.submitted"))
            if slot is None or not _fits(task, slot, claim.now):
                continue
            claim.task = task = _running(task, slot, claim.now)
            claim.started = True
            running.append(task)
            ordered.append(core.recorder.event(task, "task.started"))
        if running:
            await tx.tasks.save(running, core.instance.id)
        # A redelivered message's task.submitted may be stored already:
        # append skips what is.
        await tx.events.append(ordered, core.clock())

    async def _stored(self, tenant: str, task_id: str) -> Task | None:
        return await self._core.queries.stored(tenant, task_id)


async def _apply_owned_insert(tx: UnitOfWork, items: Sequence[tuple[Task, str]]) -> None:
    # Each delivery's row has its own claim token as owner: one statement for all.
    await tx.tasks.insert(items)


def _running(task: Task, slot: AgentSlot, now: float) -> Task:
    """The task as started on ``slot`` (what ``Placement.claim`` makes it)."""
    return task.evolve(
        state=TaskState.RUNNING,
        attempts=task.attempts + 1,
        agent_id=slot.id,
        started_at=now,
        updated_at=now,
    )


def _fits(task: Task, slot: AgentSlot, now: float) -> bool:
    """Whether a claimed task can start on the agent reserved for it (one
    cancelled meanwhile ends through recovery instead)."""
    if (
        task.state is not TaskState.PENDING
        or task.deadline <= now
        or slot.id in task.chain
        or task.cancel_requested
    ):
        return False
    return task.agent_id == slot.id if task.pinned else slot.offers(task.capability)
