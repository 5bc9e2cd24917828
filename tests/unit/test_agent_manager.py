"""The agent manager over a fake database: a task runs to its final state
(succeeded, failed, timed out, cancelled), is stored with its ``task.*``
events, waits by priority for a busy agent, and never runs more at once than
its agent allows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from datamcp.core.agents.model import TaskSpec, TaskState
from datamcp.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from tests.unit.agent_fakes import POLICY, Broken, Echo, Gate, Process, start_process
from tests.unit.fakes import FakeDatabase, outage

TENANT = "t1"


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
async def gate(db: FakeDatabase) -> AsyncIterator[tuple[Process, Gate]]:
    agent = Gate(max_concurrency=1)
    process = await start_process(db, agent)
    try:
        yield process, agent
    finally:
        agent.open.set()
        await process.stop()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.001)


def final_events(db: FakeDatabase, task_id: str) -> list[str]:
    finals = ("task.succeeded", "task.failed", "task.cancelled", "task.timed_out")
    return [t for t in db.event_types(task_id) if t in finals]


async def test_execute_runs_the_agent_and_stores_the_task_with_its_events(
    db: FakeDatabase,
) -> None:
    echo = Echo()
    p = await start_process(db, echo)
    try:
        spec = TaskSpec(capability="test.echo", input={"x": [1, 2]})
        task = await p.manager.execute(TENANT, spec, wait_limit=10)
    finally:
        await p.stop()
    assert task.state is TaskState.SUCCEEDED
    assert task.result == {"echo": {"x": [1, 2]}, "attempt": 1}
    assert (task.attempts, task.agent_id, task.error) == (1, "builtin:echo", None)
    stored = db.tasks[task.id]
    assert stored.state is TaskState.SUCCEEDED and stored.result == task.result
    assert db.owners[task.id] == p.instance.id
    assert db.event_types(task.id) == ["task.submitted", "task.started", "task.succeeded"]
    (succeeded,) = [e for e in db.events_of(task.id) if e.type == "task.succeeded"]
    assert succeeded.tenant == TENANT and succeeded.data["result"] == task.result
    assert echo.runs == 1 and p.manager.completed == 1


async def test_a_request_id_submits_once_and_wait_answers_the_final_state(
    db: FakeDatabase,
) -> None:
    echo = Echo()
    p = await start_process(db, echo)
    try:
        spec = TaskSpec(capability="test.echo", input="hi", request_id="job-1")
        first, duplicate = await p.manager.submit(TENANT, spec)
        assert not duplicate
        again, duplicate = await p.manager.submit(TENANT, spec)
        assert duplicate and again.id == first.id
        done = await p.manager.wait(TENANT, first.id, 10)
        assert done.state is TaskState.SUCCEEDED
        later, duplicate = await p.manager.submit(TENANT, spec)  # answered from the store
        assert duplicate and later.state is TaskState.SUCCEEDED
    finally:
        await p.stop()
    assert echo.runs == 1
    assert len(db.tasks) == 1


async def test_a_failing_agent_fails_the_task_with_its_error(db: FakeDatabase) -> None:
    broken = Broken()
    p = await start_process(db, broken)
    try:
        task = await p.manager.execute(TENANT, TaskSpec(capability="test.broken"), wait_limit=10)
    finally:
        await p.stop()
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert (task.error.reason, task.error.message) == ("BROKEN", "broken on run 1")
    assert broken.runs == 1  # not retryable: one attempt
    stored = db.tasks[task.id]
    assert stored.state is TaskState.FAILED and stored.error == task.error
    assert db.event_types(task.id)[-1] == "task.failed"
    (failed,) = db.events_of(task.id)[-1:]
    assert failed.data["error"]["reason"] == "BROKEN"


async def test_retryable_failures_are_retried_up_to_max_attempts(db: FakeDatabase) -> None:
    always, once = Broken(retryable=True), Broken(retryable=True, heal_after=1)
    p = await start_process(db, always)
    try:
        spec = TaskSpec(capability="test.broken", max_attempts=3)
        failed = await p.manager.execute(TENANT, spec, wait_limit=10)
        p.manager.detach("builtin:broken")
        p.manager.add_agent(once)
        healed = await p.manager.execute(TENANT, spec, wait_limit=10)
    finally:
        await p.stop()
    assert failed.state is TaskState.FAILED and failed.attempts == 3 and always.runs == 3
    assert db.event_types(failed.id).count("task.retrying") == 2
    assert healed.state is TaskState.SUCCEEDED and healed.attempts == 2
    assert healed.result == "healed"


async def test_a_task_past_its_timeout_ends_timed_out_and_frees_the_agent(
    gate: tuple[Process, Gate], db: FakeDatabase
) -> None:
    p, agent = gate
    spec = TaskSpec(capability="test.gate", input="slow", timeout=0.05)
    task = await p.manager.execute(TENANT, spec, wait_limit=10)
    assert task.state is TaskState.TIMED_OUT
    assert task.error is not None and task.error.reason == "TIMEOUT"
    assert agent.cancelled == 1  # its run was cancelled at the deadline
    assert p.manager.running == 0
    assert db.tasks[task.id].state is TaskState.TIMED_OUT
    assert final_events(db, task.id) == ["task.timed_out"]
    # The agent takes new work.
    agent.open.set()
    after = await p.manager.execute(
        TENANT, TaskSpec(capability="test.gate", input=1), wait_limit=10
    )
    assert after.state is TaskState.SUCCEEDED


async def test_cancel_stops_a_running_task_with_one_final_state(
    gate: tuple[Process, Gate], db: FakeDatabase
) -> None:
    p, agent = gate
    task, _ = await p.manager.submit(TENANT, TaskSpec(capability="test.gate", input="run"))
    await agent.entered.wait()
    assert (await p.manager.get(TENANT, task.id)).state is TaskState.RUNNING
    answers = await asyncio.gather(
        p.manager.cancel(TENANT, task.id), p.manager.cancel(TENANT, task.id)
    )
    assert [a.state for a in answers] == [TaskState.CANCELLED, TaskState.CANCELLED]
    assert agent.cancelled == 1
    with pytest.raises(FailedPrecondition) as late:
        await p.manager.cancel(TENANT, task.id)
    assert late.value.reason == "TASK_FINISHED"
    agent.open.set()  # nothing the agent could still do changes the outcome
    assert (await p.manager.wait(TENANT, task.id, 1)).state is TaskState.CANCELLED
    assert db.tasks[task.id].state is TaskState.CANCELLED
    assert final_events(db, task.id) == ["task.cancelled"]


async def test_cancel_of_a_queued_task_ends_it_before_it_runs(
    gate: tuple[Process, Gate], db: FakeDatabase
) -> None:
    p, agent = gate
    await p.manager.submit(TENANT, TaskSpec(capability="test.gate", input="busy"))
    await agent.entered.wait()
    queued, _ = await p.manager.submit(TENANT, TaskSpec(capability="test.gate", input="waits"))
    assert queued.state is TaskState.QUEUED and db.tasks[queued.id].state is TaskState.QUEUED
    cancelled = await p.manager.cancel(TENANT, queued.id)
    assert cancelled.state is TaskState.CANCELLED
    agent.open.set()
    await until(lambda: p.manager.running == 0)
    assert agent.started == ["busy"]
    assert final_events(db, queued.id) == ["task.cancelled"]


async def test_queued_tasks_run_by_priority_then_in_arrival_order(
    gate: tuple[Process, Gate],
) -> None:
    p, agent = gate
    await p.manager.submit(TENANT, TaskSpec(capability="test.gate", input="blocker"))
    await agent.entered.wait()
    ids = []
    for name, priority in [("low", -5), ("high", 10), ("mid", 0), ("high-2", 10)]:
        spec = TaskSpec(capability="test.gate", input=name, priority=priority)
        task, _ = await p.manager.submit(TENANT, spec)
        assert task.state is TaskState.QUEUED
        ids.append(task.id)
    assert p.manager.queued == 4
    agent.open.set()
    for task_id in ids:
        assert (await p.manager.wait(TENANT, task_id, 10)).state is TaskState.SUCCEEDED
    assert agent.started == ["blocker", "high", "high-2", "mid", "low"]


async def test_an_agent_never_runs_more_tasks_at_once_than_its_concurrency(
    db: FakeDatabase,
) -> None:
    agent = Gate(max_concurrency=2)
    p = await start_process(db, agent)
    try:
        spec = TaskSpec(capability="test.gate")
        tasks = [(await p.manager.submit(TENANT, spec))[0] for _ in range(5)]
        await until(lambda: agent.running == 2)
        assert [t.state for t in tasks].count(TaskState.RUNNING) == 2
        assert p.manager.queued == 3 and p.manager.running == 2
        agent.open.set()
        done = [await p.manager.wait(TENANT, t.id, 10) for t in tasks]
    finally:
        agent.open.set()
        await p.stop()
    assert all(t.state is TaskState.SUCCEEDED for t in done)
    assert agent.most_at_once == 2 and len(agent.started) == 5


async def test_a_full_queue_refuses_new_tasks(db: FakeDatabase) -> None:
    agent = Gate(max_concurrency=1)
    p = await start_process(db, agent, policy=replace(POLICY, queue_size=1))
    try:
        spec = TaskSpec(capability="test.gate")
        await p.manager.submit(TENANT, spec)  # runs
        await p.manager.submit(TENANT, spec)  # waits
        with pytest.raises(ResourceExhausted) as full:
            await p.manager.submit(TENANT, spec)
    finally:
        agent.open.set()
        await p.stop()
    assert full.value.reason == "QUEUE_FULL"
    assert len(db.tasks) == 2


async def test_a_task_not_stored_is_not_run(db: FakeDatabase) -> None:
    echo = Echo()
    p = await start_process(db, echo)
    try:
        db.outage = outage()
        with pytest.raises(Unavailable):
            await p.manager.submit(TENANT, TaskSpec(capability="test.echo"))
        db.outage = None
        await asyncio.sleep(0.01)
        assert echo.runs == 0 and p.manager.running == 0 and len(p.manager.core.live) == 0
        task = await p.manager.execute(TENANT, TaskSpec(capability="test.echo"), wait_limit=10)
    finally:
        await p.stop()
    assert task.state is TaskState.SUCCEEDED and list(db.tasks) == [task.id]


async def test_stop_hands_running_tasks_back_queued(
    db: FakeDatabase,
) -> None:
    agent = Gate(max_concurrency=1)
    p = await start_process(db, agent)
    task, _ = await p.manager.submit(TENANT, TaskSpec(capability="test.gate"))
    await agent.entered.wait()
    await p.stop()
    assert agent.cancelled == 1
    stored = db.tasks[task.id]
    assert stored.state is TaskState.QUEUED and db.owners[task.id] == p.instance.id
    assert final_events(db, task.id) == []
