"""handlers.tasks.handler with exact SQS events, on the real app (SQLite and
PostgreSQL): partial batch failures, idempotent redelivery, FIFO groups,
the invocation's time limit, and the same records as the in-process path."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from datamcp.core.agents.model import Task, TaskSpec, TaskState, task_id_for
from datamcp.core.events.model import EventFilter
from handlers import _runtime, tasks
from tests.agent_plugins import PLUGINS
from tests.lambda_events import sqs_event, sqs_record, task_body


@pytest.fixture
def lambda_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh 'container': DATAMCP_* variables as the SAM template sets them."""
    env = {
        "DATAMCP_DATABASE_URL": database_url,
        "DATAMCP_DATA_DIR": str(tmp_path),
        "DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS),
        "DATAMCP_LOGGING_LEVEL": "WARNING",
        "DATAMCP_HEALTH_INTERVAL": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield tmp_path
    finally:
        _runtime.shutdown()


def on_app(work: Any) -> Any:
    async def run() -> Any:
        return await work(await _runtime.app())

    return _runtime.loop().run_until_complete(run())


def stored(request_id: str, tenant: str = "default") -> Task | None:
    async def get(app: Any) -> Task | None:
        async with app.uow() as tx:
            task: Task | None = await tx.tasks.get(tenant, task_id_for(tenant, request_id))
            return task

    result: Task | None = on_app(get)
    return result


def event_types(task_id: str, tenant: str = "default") -> list[str]:
    async def replay(app: Any) -> list[str]:
        flt = EventFilter.build(["task.*"], subject=task_id)
        return [e.type async for e in app.events.bus.replay(tenant, flt)]

    result: list[str] = on_app(replay)
    return result


def invoke(records: list[dict[str, Any]], timeout: float = 30.0) -> dict[str, Any]:
    answer: dict[str, Any] = tasks.handler(sqs_event(records), _runtime.LocalContext(timeout))
    return answer


def failed_ids(answer: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in answer["batchItemFailures"]]


def marker_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_batch_runs_every_task_with_the_records_of_the_in_process_path(
    lambda_env: Path,
) -> None:
    records = [
        sqs_record(task_body("echo", {"n": i}, request_id=f"job-{i}", tenant="acme"))
        for i in range(3)
    ]
    assert failed_ids(invoke(records)) == []
    for i in range(3):
        task = stored(f"job-{i}", "acme")
        assert task is not None and task.state is TaskState.SUCCEEDED
        assert task.result == {"n": i} and task.attempts == 1 and task.tenant == "acme"
        assert event_types(task.id, "acme") == ["task.submitted", "task.started", "task.succeeded"]

    async def in_process(app: Any) -> Task:
        task: Task = await app.agents.execute(
            "acme", TaskSpec(capability="echo", input={"n": 9}, request_id="direct")
        )
        return task

    direct = on_app(in_process)
    queued = stored("job-0", "acme")
    assert queued is not None
    same = ("state", "capability", "agent_id", "attempts", "max_attempts", "priority")
    assert {k: getattr(direct, k) for k in same} == {k: getattr(queued, k) for k in same}
    # A queued task without a timeout gets what the function can run, not the
    # 300 s default (agents.task_queue_max_timeout).
    assert (direct.timeout, queued.timeout) == (300.0, 45.0)
    assert event_types(direct.id, "acme") == event_types(queued.id, "acme")


def test_only_the_bad_records_are_reported(lambda_env: Path) -> None:
    good = [sqs_record(task_body("echo", i, request_id=f"ok-{i}")) for i in range(2)]
    bad = [
        sqs_record("{not json"),
        sqs_record(task_body("no.such.capability", 1, request_id="bad-cap")),
        sqs_record(task_body("math.add", {"a": 1}, request_id="bad-input")),
        sqs_record({"capability": "echo", "tenant": "bad tenant!"}),
        sqs_record({"capability": "echo", "surprise": True}),
        sqs_record(["not", "an", "object"]),
        # Another producer's task that cannot end within the function.
        sqs_record(task_body("echo", 1, request_id="too-long", timeout=120)),
    ]
    answer = invoke([good[0], *bad, good[1]])
    assert failed_ids(answer) == [r["messageId"] for r in bad]
    assert all(stored(f"ok-{i}").state is TaskState.SUCCEEDED for i in range(2))  # type: ignore[union-attr]
    assert stored("bad-cap") is None and stored("bad-input") is None
    assert stored("too-long") is None


def test_a_task_that_fails_is_a_processed_record(lambda_env: Path) -> None:
    record = sqs_record(task_body("test.boom", {}, request_id="boom"))
    assert failed_ids(invoke([record])) == []
    task = stored("boom")
    assert task is not None and task.state is TaskState.FAILED
    assert task.error is not None and task.error.reason == "AGENT_ERROR"


def test_a_redelivered_message_has_its_effect_once(lambda_env: Path) -> None:
    marker = lambda_env / "runs.txt"
    body = task_body("test.slow", {"seconds": 0, "marker": str(marker)})
    first = sqs_record(body, message_id="m-1")
    assert failed_ids(invoke([first])) == []
    again = sqs_record(body, message_id="m-1", receive_count=2)  # same messageId
    assert failed_ids(invoke([again])) == []
    assert len(marker_lines(marker)) == 1
    task = stored("sqs:m-1")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    assert event_types(task.id).count("task.started") == 1


def test_the_same_request_id_in_other_messages_and_in_one_batch_runs_once(
    lambda_env: Path,
) -> None:
    marker = lambda_env / "runs.txt"
    body = task_body("test.slow", {"seconds": 0.2, "marker": str(marker)}, request_id="r-1")
    batch = [sqs_record(body), sqs_record(body), sqs_record(body)]
    assert failed_ids(invoke(batch)) == []
    assert failed_ids(invoke([sqs_record(body)])) == []
    assert len(marker_lines(marker)) == 1
    assert stored("r-1").state is TaskState.SUCCEEDED  # type: ignore[union-attr]


def test_fifo_keeps_group_order_and_a_failure_fails_only_the_rest_of_its_group(
    lambda_env: Path,
) -> None:
    marker = lambda_env / "order.txt"

    def slow(tag: str) -> dict[str, Any]:
        return task_body(
            "test.slow", {"seconds": 0.05, "marker": str(marker), "tag": tag}, request_id=tag
        )

    a1 = sqs_record(slow("a1"), group_id="A", queue="tasks.fifo")
    a2 = sqs_record(slow("a2"), group_id="A", queue="tasks.fifo")
    poison = sqs_record("{broken", group_id="A", queue="tasks.fifo")
    a3 = sqs_record(slow("a3"), group_id="A", queue="tasks.fifo")
    b1 = sqs_record(slow("b1"), group_id="B", queue="tasks.fifo")
    b2 = sqs_record(slow("b2"), group_id="B", queue="tasks.fifo")
    answer = invoke([a1, b1, a2, poison, b2, a3])
    assert failed_ids(answer) == [poison["messageId"], a3["messageId"]]
    assert stored("a3") is None  # never attempted: it must not overtake the poison
    ran = {tag: stored(tag) for tag in ("a1", "a2", "b1", "b2")}
    assert all(t is not None and t.state is TaskState.SUCCEEDED for t in ran.values())
    order = [line.split()[0] for line in marker_lines(marker)]
    ids = {tag: t.id for tag, t in ran.items() if t}
    assert order.index(ids["a1"]) < order.index(ids["a2"])
    assert order.index(ids["b1"]) < order.index(ids["b2"])


def test_out_of_time_hands_the_task_back_and_a_redelivery_finishes_it(
    lambda_env: Path,
) -> None:
    body = task_body("test.slow", {"seconds": 2.0}, request_id="long", timeout=30)
    record = sqs_record(body, message_id="m-long")
    assert failed_ids(invoke([record], timeout=1.5)) == ["m-long"]
    task = stored("long")
    assert task is not None and task.state is TaskState.QUEUED and task.attempts == 1
    assert failed_ids(invoke([sqs_record(body, message_id="m-long")], timeout=30)) == []
    task = stored("long")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 2


def test_an_event_that_is_not_an_sqs_batch_fails_the_invocation(lambda_env: Path) -> None:
    context = _runtime.LocalContext(5)
    for event in ({"foo": 1}, {"Records": "x"}, {"Records": [{"eventSource": "aws:sqs"}]}, []):
        with pytest.raises(ValueError):
            tasks.handler(event, context)
    assert tasks.handler({"Records": []}, context) == {"batchItemFailures": []}


def test_a_task_left_running_by_a_crashed_container_is_taken_over(lambda_env: Path) -> None:
    """A redelivery finds the task RUNNING under an instance that is gone
    (no heartbeat, no row): it is adopted and run again, once."""
    body = task_body("echo", {"again": True}, request_id="crashed")
    tenant = "default"

    async def crashed_run(app: Any) -> None:
        # What a container that died mid-run leaves: the task and its events,
        # owned by an instance that no longer exists.
        spec = TaskSpec(capability="echo", input={"again": True}, request_id="crashed")
        await _store_task(app, tenant, spec, "0" * 32, TaskState.RUNNING)

    on_app(crashed_run)
    assert failed_ids(invoke([sqs_record(body)])) == []
    task = stored("crashed")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 2
    assert failed_ids(invoke([sqs_record(body)])) == []  # and only once
    assert stored("crashed").attempts == 2  # type: ignore[union-attr]


async def _store_task(app: Any, tenant: str, spec: TaskSpec, owner: str, state: TaskState) -> Task:
    """Store a task (and its events) under ``owner`` as that process leaves it:
    PENDING, or started once on the echo agent."""
    core = app.agents.core
    now = time.time()
    checked = core.validator.check(tenant, replace(spec, timeout=60.0))
    task_id = task_id_for(tenant, spec.request_id)
    pending = core.validator.new_task(tenant, spec, checked, task_id=task_id, now=now)
    task, events = pending, [core.recorder.event(pending, "task.submitted")]
    if state is not TaskState.PENDING:
        task = pending.evolve(state=state, attempts=1, agent_id="builtin:echo", started_at=now)
        events.append(core.recorder.event(task, "task.started"))
    async with app.uow() as tx:
        await tx.tasks.insert([(task, owner)])
        await tx.events.append(events, now)
        await tx.commit()
    return task


def _held_elsewhere(request_id: str, state: TaskState, *, alive: bool = True) -> str:
    """Store a task held by another container (an instance row with a fresh
    heartbeat on another host), as that container leaves it; its task id."""
    from datamcp.core.instance_model import Instance

    tenant, task_id = "default", task_id_for("default", request_id)
    owner = "e" * 32

    async def hold(app: Any) -> None:
        now = time.time()
        beat = now if alive else now - 3600
        async with app.uow() as tx:
            await tx.instances.add(Instance(owner, "lambda:other", 1, "x", beat, beat))
            await tx.commit()
        spec = TaskSpec(capability="echo", input={"held": True}, request_id=request_id)
        await _store_task(app, tenant, spec, owner, state)

    on_app(hold)
    return task_id


def test_a_duplicate_of_a_task_a_live_container_runs_succeeds_without_running_it(
    lambda_env: Path,
) -> None:
    """'Task busy' must not count towards maxReceiveCount when the task is
    RUNNING under a live owner: the duplicate's effect exists."""
    task_id = _held_elsewhere("held-running", TaskState.RUNNING)
    body = task_body("echo", {"held": True}, request_id="held-running")
    assert failed_ids(invoke([sqs_record(body), sqs_record(body)])) == []
    task = stored("held-running")
    assert task is not None and task.state is TaskState.RUNNING and task.attempts == 1
    assert event_types(task_id) == ["task.submitted", "task.started"]  # nothing ran here

    async def owner(app: Any) -> str:
        async with app.uow() as tx:
            owners: list[str] = await tx.tasks.owners_of_unfinished()
            return owners[0]

    assert on_app(owner) == "e" * 32  # still the live container's


def test_a_task_a_live_container_handed_back_is_busy_and_fails_the_record(
    lambda_env: Path,
) -> None:
    """QUEUED under a live (frozen) container: nobody runs it now, so the
    record fails and SQS redelivers it until the owner is gone."""
    _held_elsewhere("held-queued", TaskState.QUEUED)
    record = sqs_record(task_body("echo", {"held": True}, request_id="held-queued"))
    assert failed_ids(invoke([record])) == [record["messageId"]]
    assert stored("held-queued").state is TaskState.QUEUED  # type: ignore[union-attr]


def test_a_task_of_a_gone_container_is_run_not_reported_busy(lambda_env: Path) -> None:
    _held_elsewhere("held-gone", TaskState.RUNNING, alive=False)
    record = sqs_record(task_body("echo", {"held": True}, request_id="held-gone"))
    assert failed_ids(invoke([record])) == []
    task = stored("held-gone")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 2


def test_the_claim_commit_stores_the_task_running_with_its_start_event(
    lambda_env: Path,
) -> None:
    """Taking a task and its RUNNING mark are one commit: the batch costs the
    claim's commit and the final one, and every event is stored once, in order."""
    records = [sqs_record(task_body("echo", {"n": i}, request_id=f"one-{i}")) for i in range(5)]
    invoke(records[:1])  # warm: the app is built

    async def commits(app: Any) -> int:
        n: int = app.events.bus.commits
        return n

    before = on_app(commits)
    assert failed_ids(invoke(records[1:])) == []
    assert on_app(commits) - before <= 2
    for i in range(1, 5):
        task = stored(f"one-{i}")
        assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
        types = ["task.submitted", "task.started", "task.succeeded"]
        assert event_types(task.id) == types


def test_a_saturated_agent_still_runs_claimed_tasks_once(lambda_env: Path) -> None:
    """More records than the agent's concurrency: the claims that find no free
    agent queue their task (no reservation leaks) and all run, once each."""
    marker = lambda_env / "runs.txt"
    records = [
        sqs_record(task_body("test.slow", {"seconds": 0.05, "marker": str(marker)}))
        for _ in range(12)
    ]
    assert failed_ids(invoke(records)) == []
    assert len(marker_lines(marker)) == 12

    async def load(app: Any) -> list[int]:
        return [s.in_flight for s in app.agents.registry.all()]

    assert set(on_app(load)) == {0}


def test_the_sweep_prunes_instance_rows_of_long_gone_containers(lambda_env: Path) -> None:
    """Every cold start leaves an instance row; the servers' recovery sweep
    deletes the stopped or silent ones older than the retention (never its
    own), and a task of a pruned instance is still adopted as an orphan."""
    from datamcp.core.instance_model import Instance

    day = 86_400.0
    now = time.time()
    rows = {
        "a" * 32: Instance("a" * 32, "lambda:a", 1, "x", now - 2 * day, now - 2 * day),
        "b" * 32: Instance("b" * 32, "h", 1, "x", now - 3 * day, now - 2 * day, now - 2 * day),
        "c" * 32: Instance("c" * 32, "lambda:c", 1, "x", now - 2 * day, now - 60),
        "d" * 32: Instance("d" * 32, "h", 1, "x", now - 3 * day, now - 600, now - 600),
    }

    async def seed_and_prune(app: Any) -> tuple[int, set[str], int]:
        async with app.uow() as tx:
            for row in rows.values():
                await tx.instances.add(row)
            await tx.commit()
        m = app.agents
        spec = TaskSpec(capability="echo", input=1, request_id="of-pruned")
        task_id = (await _store_task(app, "default", spec, "a" * 32, TaskState.PENDING)).id
        removed = await m.prune_instances()
        again = await m.prune_instances()
        async with app.uow() as tx:
            left = {i for i in [*rows, app.instance.id] if await tx.instances.get(i)}
        adopted = await m.adopt_orphans()
        await m.wait("default", task_id, 10)
        assert again == 0
        return removed, left, adopted

    removed, left, adopted = on_app(seed_and_prune)
    assert removed == 2 and adopted == 1
    assert left == {"c" * 32, "d" * 32, on_app(_ident)}
    assert stored("of-pruned").state is TaskState.SUCCEEDED  # type: ignore[union-attr]


async def _ident(app: Any) -> str:
    ident: str = app.instance.id
    return ident
