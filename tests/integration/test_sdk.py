"""The Python SDK (datamcp_client) against the real server: typed results, JSON
with ints kept, typed exceptions from the status details, retries that honour
RetryInfo for idempotent calls only, subscriptions with ack/nack, tenancy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import datamcp_client as dc
from datamcp_client import Client, NewEvent, RetryPolicy, TaskState
from tests.agent_plugins import PLUGINS
from tests.support import (
    API_KEY,
    api_key_config,
    auth_overrides,
    make_settings,
    running_server,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
OTHER_KEY = "other-tenant-key-0123456789abcdef"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = make_settings(tmp_path, **{"agents.plugins": PLUGINS})
    async with running_server(settings) as srv:
        async with await Client.connect(srv.target) as c:
            yield c


async def test_execute_gives_a_typed_task_with_plain_json_and_ints_kept(client: Client) -> None:
    data = {"a": 1, "big": 2**53 - 1, "huge": 2.0**60, "f": 2.5, "l": [0, -3, None, True], "s": "x"}
    task = await client.agents.execute("echo", data, timeout=10)
    assert task.state is TaskState.SUCCEEDED and task.done and task.succeeded
    assert task.result == data
    assert type(task.result["a"]) is int and type(task.result["big"]) is int
    assert type(task.result["huge"]) is float and type(task.result["f"]) is float
    assert task.input == data and task.capability == "echo" and task.agent_id == "builtin:echo"
    assert task.create_time is not None and task.end_time is not None
    assert task.request_id  # generated, so a retried call cannot run it twice


async def test_a_failed_task_is_a_state_not_an_exception(client: Client) -> None:
    task = await client.agents.execute("test.boom", {})
    assert task.state is TaskState.FAILED and task.result is None
    assert task.error is not None and task.error.reason


async def test_submit_then_wait_and_watch_and_the_same_request_id_gives_the_same_task(
    client: Client,
) -> None:
    first = await client.agents.submit("test.slow", {"seconds": 0.3}, request_id="job-1")
    again = await client.agents.submit("test.slow", {"seconds": 0.3}, request_id="job-1")
    assert again.id == first.id
    states = [t.state async for t in client.agents.watch(first.id)]
    assert states[-1] is TaskState.SUCCEEDED
    assert (await client.agents.wait(first.id)).state is TaskState.SUCCEEDED
    listed = [t.id async for t in client.agents.tasks(states=["succeeded"], limit=5)]
    assert first.id in listed
    with pytest.raises(ValueError, match="not one of"):
        [t async for t in client.agents.tasks(states=["no-such-state"])]


async def test_cancel_a_running_task_and_cancelling_it_again_is_a_precondition(
    client: Client,
) -> None:
    task = await client.agents.submit("test.slow", {"seconds": 30})
    cancelled = await client.agents.cancel(task.id)
    assert (await client.agents.wait(cancelled.id)).state is TaskState.CANCELLED
    with pytest.raises(dc.FailedPreconditionError):
        await client.agents.cancel(task.id)


async def test_errors_are_typed_from_the_details(client: Client) -> None:
    with pytest.raises(dc.InvalidArgumentError) as bad:
        await client.agents.execute("no.such.capability", {})
    assert bad.value.reason == "INVALID_TASK" and bad.value.domain == "datamcp.dev"
    assert [v.field for v in bad.value.field_violations] == ["task.capability"]
    assert bad.value.request_id and isinstance(bad.value, dc.DataMCPError)
    with pytest.raises(dc.NotFoundError):
        await client.agents.get_task("00000000-0000-0000-0000-000000000000")
    first = await client.memory.put("ns", "k", 1)
    await client.memory.put("ns", "k", 2)
    with pytest.raises(dc.AbortedError) as stale:
        await client.memory.put("ns", "k", 3, expected_version=first.version)
    assert stale.value.metadata["current_version"] != first.version
    assert (await client.memory.get("ns", "k")).value == 2  # the refused write stored nothing


async def test_hostile_input_is_refused_before_or_by_the_server(client: Client) -> None:
    with pytest.raises(TypeError):
        await client.agents.execute("echo", {"a": {1, 2}})
    with pytest.raises(TypeError):
        await client.events.publish("x.y", {1: "non-string key"})
    with pytest.raises(dc.InvalidArgumentError) as big:
        await client.agents.execute("echo", "x" * (2 * 1024 * 1024))
    assert big.value.field_violations
    with pytest.raises(dc.InvalidArgumentError):
        await client.events.publish("Not A Type!", 1)
    assert [t async for t in client.agents.tasks()] == []  # nothing was stored


async def test_events_publish_batch_subscribe_ack_nack_dead_letters_and_redrive(
    client: Client,
) -> None:
    results = await client.events.publish_batch(
        [NewEvent("order.paid", {"n": n}, subject="o", id=f"e-{n}") for n in range(5)],
        batch_size=2,
    )
    assert [r.duplicate for r in results] == [False] * 5
    again = await client.events.publish("order.paid", {"n": 0}, subject="o", id="e-0")
    assert again.duplicate and again.sequence == results[0].sequence
    async with client.events.subscribe(
        "billing", types=["order.*"], start="earliest", max_attempts=2
    ) as sub:
        assert sub.info is not None and sub.info.name == "billing"
        first = await anext(sub)
        assert first.event.data == {"n": 0} and first.attempt == 1
        await first.nack("try later", retry_after=0)
        redelivered = await anext(sub)
        assert redelivered.event.id == "e-0" and redelivered.attempt == 2
        await redelivered.nack("give up")  # attempts used up: dead-lettered
        for _ in range(4):
            await (await anext(sub)).ack()
    letters = [d async for d in client.events.dead_letters("billing")]
    assert [(d.event.id, d.last_error) for d in letters] == [("e-0", "give up")]
    assert await client.events.redrive("billing") == 1
    async with client.events.subscribe("billing", auto_ack=True) as sub:
        back = await anext(sub)
        assert back.event.id == "e-0"
    info = [s async for s in client.events.subscriptions()]
    assert info[0].name == "billing"
    replayed = [e.data["n"] async for e in client.events.replay(types=["order.paid"])]
    assert replayed == [0, 1, 2, 3, 4]


async def test_pipelines_validate_create_run_and_follow(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, **{"pipelines.data_roots": [str(tmp_path / "out"), str(QUICKSTART / "data")]}
    )
    spec = (QUICKSTART / "paid-orders.yaml").read_text()
    async with running_server(settings) as srv, await Client.connect(srv.target) as client:
        check = await client.pipelines.validate(spec, preview_rows=2)
        assert check.valid and check.columns == ("id", "customer", "total")
        broken = await client.pipelines.validate(spec.replace("round(", "nofunc("))
        assert not broken.valid and broken.problems[0].field.startswith("transforms[3]")
        pipeline = await client.pipelines.create(spec)
        with pytest.raises(dc.AlreadyExistsError):
            await client.pipelines.create(spec)
        run = await client.pipelines.run(pipeline.name, params={"min_amount": 10})
        updates = [r async for r in client.pipelines.watch_run(run.id)]
        assert updates[-1].state is dc.RunState.SUCCEEDED
        done = await client.pipelines.get_run(run.id, reject_limit=10)
        assert (done.rows_read, done.rows_written) == (8, 3)
        assert {r.stage for r in done.rejects} == {"transforms[0].cast"}
        assert [p.name async for p in client.pipelines.list()] == ["paid-orders"]
    lines = (tmp_path / "out" / "paid-orders.jsonl").read_text().splitlines()
    assert len(lines) == 3


async def test_memory_sync_between_two_stores(tmp_path: Path) -> None:
    stores = [
        {"id": "main", "url": f"sqlite:///{tmp_path / 'datamcp.db'}", "primary": True},
        {"id": "edge", "url": f"sqlite:///{tmp_path / 'edge.db'}"},
    ]
    async with (
        running_server(make_settings(tmp_path, **{"memory.stores": stores})) as srv,
        await Client.connect(srv.target) as client,
    ):
        await client.memory.put("agents/a", "goal", {"text": "ship"}, tags=["todo"])
        run = await client.memory.sync(background=True)
        updates = [r async for r in client.memory.watch_sync(run.id)]
        assert updates[-1].status is dc.SyncStatus.SUCCEEDED and updates[-1].records_synced == 1
        edge = await client.memory.get("agents/a", "goal", store="edge")
        assert edge.value == {"text": "ship"} and edge.tags == ("todo",)
        await client.memory.put("n", "k", "main", store="main")
        await client.memory.put("n", "k", "edge", store="edge")
        manual = await client.memory.sync(strategy="manual")
        assert manual.conflicts_pending == 1
        conflicts = [c async for c in client.memory.conflicts()]
        assert len(conflicts) == 1
        conflict = conflicts[0]
        _, record = await client.memory.resolve(conflict.id, value="both")
        assert record.value == "both"
        found = [r.key async for r in client.memory.search("agents", text="ship")]
        assert found == ["goal"]


async def test_idempotent_calls_wait_out_retry_info_and_others_raise(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"rate_limit.rate": 4.0, "rate_limit.burst": 1})
    async with running_server(settings) as srv:
        async with await Client.connect(srv.target) as client:
            await client.health.report()  # the only token
            started = time.monotonic()
            report = await client.health.report()  # RESOURCE_EXHAUSTED, then a retry
            assert report.ok and time.monotonic() - started >= 0.1
            await asyncio.sleep(0.3)
            await client.health.report()
            with pytest.raises(dc.ResourceExhaustedError) as limited:
                await client.memory.put("n", "k", 1)  # a put is never repeated
            assert limited.value.retry_delay is not None and limited.value.retry_delay > 0
            assert limited.value.quota_violations
        no_retry = RetryPolicy(max_attempts=1)
        async with await Client.connect(srv.target, retry=no_retry) as client:
            await asyncio.sleep(0.3)
            await client.health.report()
            with pytest.raises(dc.ResourceExhaustedError):
                await client.health.report()


async def test_credentials_and_two_tenants(tmp_path: Path) -> None:
    overrides: dict[str, Any] = auth_overrides()
    overrides["auth.api_keys"].append(api_key_config(OTHER_KEY, "zoe", "other", ["user"]))
    async with running_server(make_settings(tmp_path, **overrides)) as srv:
        async with await Client.connect(srv.target) as anonymous:
            with pytest.raises(dc.UnauthenticatedError):
                await anonymous.agents.list()
        async with (
            await Client.connect(srv.target, api_key=API_KEY) as acme,
            await Client.connect(srv.target, api_key=OTHER_KEY) as other,
        ):
            task = await acme.agents.execute("echo", {"secret": 1})
            await acme.events.publish("acme.only", 1)
            await acme.memory.put("ns", "k", "acme")
            with pytest.raises(dc.NotFoundError):
                await other.agents.get_task(task.id)
            assert [t async for t in other.agents.tasks()] == []
            assert [e async for e in other.events.replay()] == []
            with pytest.raises(dc.NotFoundError):
                await other.memory.get("ns", "k")
            with pytest.raises(dc.PermissionDeniedError):
                await other.health.metrics()


async def test_connect_fails_fast_when_nothing_listens() -> None:
    started = time.monotonic()
    with pytest.raises(dc.UnavailableError):
        await Client.connect("127.0.0.1:9", connect_timeout=5)
    assert time.monotonic() - started < 5


async def test_the_blocking_facade(tmp_path: Path) -> None:
    from datamcp_client.sync import Client as SyncClient

    async with running_server(make_settings(tmp_path)) as srv:

        def script() -> tuple[Any, list[str]]:
            with SyncClient.connect(srv.target) as c:
                result = c.agents.execute("echo", {"a": 1}).result
                c.events.publish("sync.demo", 1)
                types = [e.type for e in c.events.replay(types=["sync.*"])]
                return result, types

        result, types = await asyncio.to_thread(script)
    assert result == {"a": 1} and types == ["sync.demo"]


def test_public_exports_are_pinned() -> None:
    assert set(dc.__all__) >= {
        "Client",
        "TLSConfig",
        "RetryPolicy",
        "DataMCPError",
        "RPCError",
        "InvalidArgumentError",
        "NotFoundError",
        "AbortedError",
        "ResourceExhaustedError",
        "UnavailableError",
        "Task",
        "TaskState",
        "Event",
        "NewEvent",
        "Delivery",
        "Run",
        "RunState",
        "MemoryRecord",
        "SyncRun",
        "HealthReport",
    }
    for name in dc.__all__:
        assert getattr(dc, name) is not None
