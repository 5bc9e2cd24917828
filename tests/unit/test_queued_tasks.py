"""Queued execution over a fake database and a fake queue: what a sender puts
on the queue and stores, a delivered task claimed and run once however many
times it is delivered, and a consumer releasing what it could not finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from datamcp.core import instances
from datamcp.core.agents.model import Task, TaskSpec, TaskState
from datamcp.core.agents.queued import QueuedTask, queue_owner
from datamcp.core.errors import (
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from tests.unit.agent_fakes import Echo, FakeTaskQueue, Gate, Process, start_process
from tests.unit.fakes import FakeDatabase

TENANT = "t1"


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def queue() -> FakeTaskQueue:
    return FakeTaskQueue()


@pytest.fixture
async def sender(db: FakeDatabase, queue: FakeTaskQueue) -> AsyncIterator[tuple[Process, Echo]]:
    """A server in queued mode: its own agent must never run queued tasks."""
    echo = Echo()
    process = await start_process(db, echo, Gate(), queue=queue, max_timeout=60.0)
    try:
        yield process, echo
    finally:
        await process.stop()


@pytest.fixture
async def consumers(db: FakeDatabase) -> AsyncIterator[list[tuple[Process, Gate]]]:
    """Two consumers of the queue (Lambda containers), each with a closed gate agent."""
    out = []
    for _ in range(2):
        gate = Gate()
        out.append((await start_process(db, gate), gate))
    try:
        yield out
    finally:
        for process, gate in out:
            gate.open.set()
            await process.stop()


def events_of(db: FakeDatabase, task_id: str, event_type: str) -> int:
    return db.event_types(task_id).count(event_type)


async def test_submit_sends_the_task_then_stores_it_owned_by_the_queue(
    sender: tuple[Process, Echo], queue: FakeTaskQueue, db: FakeDatabase
) -> None:
    p, echo = sender
    spec = TaskSpec(capability="test.echo", input={"a": 1}, priority=3)
    task, duplicate = await p.manager.queued_tasks.submit(TENANT, spec)
    assert not duplicate and task.state is TaskState.PENDING
    assert task.request_id.startswith("queued:")
    (message,) = queue.messages()
    assert message.tenant == TENANT and message.task_id == task.id
    assert message.spec == TaskSpec(
        capability="test.echo",
        input={"a": 1},
        priority=3,
        timeout=60.0,  # the default timeout, cut to what the consumer may take
        request_id=task.request_id,
    )
    assert db.tasks[task.id].state is TaskState.PENDING
    assert db.owners[task.id] == queue_owner(task.id)
    assert db.event_types(task.id) == ["task.submitted"]
    await asyncio.sleep(0.01)
    assert echo.runs == 0 and p.manager.running == 0

    spec = TaskSpec(capability="test.echo", request_id=task.request_id)
    again, duplicate = await p.manager.queued_tasks.submit(TENANT, spec)
    assert duplicate and again.id == task.id
    assert len(queue.bodies) == 1


async def test_nothing_is_sent_or_stored_for_a_task_that_cannot_be_queued(
    sender: tuple[Process, Echo], queue: FakeTaskQueue, db: FakeDatabase
) -> None:
    queued = sender[0].manager.queued_tasks
    with pytest.raises(InvalidArgument) as too_long:
        await queued.submit(TENANT, TaskSpec(capability="test.echo", timeout=61))
    assert too_long.value.reason == "TIMEOUT_EXCEEDS_QUEUE"
    with pytest.raises(InvalidArgument):
        await queued.submit(TENANT, TaskSpec(capability="test.unknown"))
    queue.down = Unavailable("the queue is down")
    with pytest.raises(Unavailable):
        await queued.submit(TENANT, TaskSpec(capability="test.echo"))
    queued.queue = None
    with pytest.raises(FailedPrecondition) as off:
        await queued.submit(TENANT, TaskSpec(capability="test.echo"))
    assert off.value.reason == "NO_TASK_QUEUE"
    assert queue.bodies == [] and db.tasks == {} and db.events == {}


async def test_a_delivered_task_is_claimed_and_run_by_the_consumer(
    sender: tuple[Process, Echo],
    queue: FakeTaskQueue,
    consumers: list[tuple[Process, Gate]],
    db: FakeDatabase,
) -> None:
    (consumer, gate), _ = consumers
    stored, _ = await sender[0].manager.queued_tasks.submit(
        TENANT, TaskSpec(capability="test.gate", input="work")
    )
    (message,) = queue.messages()
    gate.open.set()
    task, duplicate = await consumer.manager.queued_tasks.run(message, within=10)
    assert not duplicate and task.id == stored.id
    assert task.state is TaskState.SUCCEEDED and task.result == "work"
    assert db.owners[task.id] == consumer.instance.id
    assert db.tasks[task.id].state is TaskState.SUCCEEDED
    assert db.event_types(task.id) == ["task.submitted", "task.started", "task.succeeded"]
    # A redelivery of a finished task does nothing.
    again, duplicate = await consumer.manager.queued_tasks.run(message, within=10)
    assert duplicate and again.state is TaskState.SUCCEEDED
    assert gate.started == ["work"]


@pytest.mark.parametrize("stored_first", [True, False], ids=["sender-stored", "message-only"])
async def test_a_task_delivered_to_two_consumers_at_once_runs_once(
    stored_first: bool,
    sender: tuple[Process, Echo],
    queue: FakeTaskQueue,
    consumers: list[tuple[Process, Gate]],
    db: FakeDatabase,
) -> None:
    if stored_first:
        await sender[0].manager.queued_tasks.submit(TENANT, TaskSpec(capability="test.gate"))
        (message,) = queue.messages()
    else:  # a message put on the queue by another system: the consumer stores it
        body = {"tenant": TENANT, "capability": "test.gate", "input": "x"}
        message = QueuedTask.from_message(body, "m-7")
    runs = [
        asyncio.ensure_future(c.manager.queued_tasks.run(message, within=10)) for c, _ in consumers
    ]
    gates = [g for _, g in consumers]
    await until_any(gates)
    # The loser answers while the winner still runs: a duplicate of a RUNNING task.
    (loser,) = await _first_done(runs)
    task, duplicate = loser.result()
    assert duplicate and task.state is TaskState.RUNNING
    for gate in gates:
        gate.open.set()
    results = await asyncio.gather(*runs)
    assert sorted(d for _, d in results) == [False, True]
    assert sum(len(g.started) for g in gates) == 1
    task_id = message.task_id
    assert db.tasks[task_id].state is TaskState.SUCCEEDED
    for event_type in ("task.submitted", "task.started", "task.succeeded"):
        assert events_of(db, task_id, event_type) == 1


async def test_a_task_delivered_twice_to_one_consumer_runs_once(
    consumers: list[tuple[Process, Gate]], db: FakeDatabase
) -> None:
    (consumer, gate), _ = consumers
    message = QueuedTask.from_message({"tenant": TENANT, "capability": "test.gate"}, "m-1")
    runs = [
        asyncio.ensure_future(consumer.manager.queued_tasks.run(message, within=10))
        for _ in range(2)
    ]
    await gate.entered.wait()
    gate.open.set()
    results = await asyncio.gather(*runs)
    assert [t.state for t, _ in results] == [TaskState.SUCCEEDED] * 2
    assert len(gate.started) == 1
    assert events_of(db, message.task_id, "task.started") == 1


async def test_an_unfinished_task_is_released_and_a_redelivery_runs_it(
    consumers: list[tuple[Process, Gate]], db: FakeDatabase
) -> None:
    (first, first_gate), (second, second_gate) = consumers
    message = QueuedTask.from_message({"tenant": TENANT, "capability": "test.gate"}, "m-2")
    with pytest.raises(DeadlineExceeded) as late:
        await first.manager.queued_tasks.run(message, within=0.05)
    assert late.value.reason == "TASK_NOT_FINISHED"
    # The invocation ends: its work goes back to the store, still its own.
    assert await first.manager.queued_tasks.release() == 1
    assert first_gate.cancelled == 1 and first.manager.running == 0
    task_id = message.task_id
    assert db.tasks[task_id].state is TaskState.QUEUED
    assert db.owners[task_id] == first.instance.id
    # While its process looks alive, another consumer leaves the task alone.
    with pytest.raises(Conflict) as busy:
        await second.manager.queued_tasks.run(message, within=10)
    assert busy.value.reason == "TASK_BUSY"
    # Once it is gone, a redelivery takes the task over and runs it.
    await instances.mark_stopped(db.uow, first.instance.id)  # type: ignore[arg-type]
    second_gate.open.set()
    task, duplicate = await second.manager.queued_tasks.run(message, within=10)
    assert not duplicate and task.state is TaskState.SUCCEEDED
    assert task.attempts == 2 and db.owners[task_id] == second.instance.id
    assert events_of(db, task_id, "task.succeeded") == 1
    assert len(first_gate.started) == len(second_gate.started) == 1


async def test_settle_waits_for_the_tasks_of_the_invocation(
    consumers: list[tuple[Process, Gate]],
) -> None:
    (consumer, gate), _ = consumers
    queued = consumer.manager.queued_tasks
    assert await queued.settle(1) == 0
    task, _ = await consumer.manager.submit(TENANT, TaskSpec(capability="test.gate"))
    await gate.entered.wait()
    assert await queued.settle(0.01) == 1
    gate.open.set()
    assert await queued.settle(10) == 0
    assert (await consumer.manager.get(TENANT, task.id)).state is TaskState.SUCCEEDED


async def until_any(gates: list[Gate], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not any(g.entered.is_set() for g in gates):
            await asyncio.sleep(0.001)


async def _first_done(
    runs: Sequence[asyncio.Future[tuple[Task, bool]]], within: float = 5.0
) -> set[asyncio.Future[tuple[Task, bool]]]:
    done, _ = await asyncio.wait(runs, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    return done
