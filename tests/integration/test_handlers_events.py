"""handlers.events.handler and handlers.schedule.handler with exact
EventBridge events, on the real app: routing through the configured
triggers, once per event, tenant by tenant; due work on schedule ticks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamcp.core.agents.model import TaskState, task_id_for
from datamcp.core.errors import InvalidArgument
from datamcp.core.events.model import EventFilter
from handlers import _runtime, events, schedule
from tests.integration.test_handlers_tasks import on_app, stored
from tests.lambda_events import eventbridge_event, mesh_cloudevent, scheduled_event

TRIGGERS = [
    {
        "name": "orders",
        "types": ["order.created"],
        "action": "agent.submit_task",
        "params": {"capability": "echo"},
    },
    {
        "name": "alerts",
        "types": ["task.failed"],
        "action": "events.publish",
        "params": {"type": "alert.raised", "data": {"severity": "high"}},
    },
]


@pytest.fixture
def lambda_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    monkeypatch.setenv("DATAMCP_DATABASE_URL", database_url)
    monkeypatch.setenv("DATAMCP_EVENTS_TRIGGERS", json.dumps(TRIGGERS))
    monkeypatch.setenv("DATAMCP_LOGGING_LEVEL", "WARNING")
    try:
        yield tmp_path
    finally:
        _runtime.shutdown()


def stored_types(tenant: str, pattern: str) -> list[str]:
    async def replay(app: Any) -> list[str]:
        flt = EventFilter.build([pattern])
        return [e.type async for e in app.events.bus.replay(tenant, flt)]

    result: list[str] = on_app(replay)
    return result


def route(event: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = events.handler(event, _runtime.LocalContext(30))
    return answer


def test_a_mesh_event_submits_a_task_that_runs_in_the_invocation_once(
    lambda_env: Path,
) -> None:
    detail = mesh_cloudevent("order.created", {"order": 7}, event_id="ev-1")
    event = eventbridge_event("order.created", detail)
    answer = route(event)
    assert answer["triggers"] == ["orders"] and answer["unfinished_tasks"] == 0
    task = stored("event:ev-1")
    assert task is not None and task.state is TaskState.SUCCEEDED
    assert task.result == {"order": 7} and task.correlation_id == "ev-1"
    # EventBridge retries the same event (its own id differs, the mesh id does not).
    assert route(eventbridge_event("order.created", detail))["triggers"] == ["orders"]
    assert stored_types("default", "task.*").count("task.submitted") == 1


def test_events_publish_derives_its_event_once(lambda_env: Path) -> None:
    detail = mesh_cloudevent("task.failed", {"error": "boom"}, event_id="t-9", subject="t-9")
    for _ in range(2):
        assert route(eventbridge_event("task.failed", detail))["triggers"] == ["alerts"]
    assert stored_types("default", "alert.*") == ["alert.raised"]


def test_triggers_see_only_their_own_tenant(lambda_env: Path) -> None:
    detail = mesh_cloudevent("order.created", {"order": 1}, tenant="acme", event_id="ev-a")
    assert route(eventbridge_event("order.created", detail))["triggers"] == []
    assert stored("event:ev-a", "acme") is None and stored("event:ev-a") is None


def test_a_foreign_event_routes_by_detail_type_with_its_detail_as_data(
    lambda_env: Path,
) -> None:
    s3 = eventbridge_event("Object Created", {"bucket": {"name": "b"}}, source="aws.s3")
    answer = route(s3)
    assert answer == {
        "id": s3["id"],
        "type": "Object Created",
        "tenant": "default",
        "triggers": [],
        "unfinished_tasks": 0,
    }
    plain = eventbridge_event("order.created", {"order": 3}, event_id="eb-1", source="shop")
    assert route(plain)["triggers"] == ["orders"]
    task = stored("event:eb-1")
    assert task is not None and task.input == {"order": 3}


def test_malformed_events_fail_the_invocation(lambda_env: Path) -> None:
    context = _runtime.LocalContext(5)
    bad_time = eventbridge_event("order.created", {})
    bad_time["time"] = "yesterday"
    no_id = mesh_cloudevent("order.created", {})
    del no_id["id"]
    hostile = [no_id]
    for field, value in (("tenant", "*"), ("tenant", "a|b"), ("type", "X")):
        cloudevent = mesh_cloudevent("order.created", {})
        cloudevent[field] = value
        hostile.append(cloudevent)
    malformed = [{"Records": []}, [], bad_time]
    for event in malformed + [eventbridge_event("order.created", ce) for ce in hostile]:
        with pytest.raises(ValueError):
            events.handler(event, context)
    assert stored_types("*", "order.*") == [] and stored_types("a|b", "order.*") == []


def test_a_schedule_tick_with_nothing_scheduled_starts_nothing(lambda_env: Path) -> None:
    answer = schedule.handler(scheduled_event(at=1_700_000_000), _runtime.LocalContext(10))
    registered = on_app(_names)
    # Whatever services registered (memory syncs today) have nothing configured.
    assert answer["due"] == dict.fromkeys(registered, 0) and answer["errors"] == {}
    assert answer["time"] == 1_700_000_000


async def _names(app: Any) -> tuple[str, ...]:
    names: tuple[str, ...] = app.due.names
    return names


def test_a_schedule_tick_runs_registered_due_work_at_the_tick_time(lambda_env: Path) -> None:
    calls: list[tuple[str, float]] = []

    async def register(app: Any) -> None:
        async def syncs(now: float) -> int:
            calls.append(("syncs", now))
            return 2

        async def runs(now: float) -> int:
            calls.append(("runs", now))
            raise RuntimeError("store down")

        app.due.register("syncs", syncs)
        app.due.register("runs", runs)

    on_app(register)
    context = _runtime.LocalContext(10)
    only = schedule.handler(scheduled_event(at=1_700_000_060, work=["syncs"]), context)
    assert only["due"] == {"syncs": 2} and calls == [("syncs", 1_700_000_060)]
    with pytest.raises(schedule.DueWorkFailed, match="store down"):
        schedule.handler(scheduled_event(at=1_700_000_120), context)
    assert sorted(calls[1:]) == [("runs", 1_700_000_120), ("syncs", 1_700_000_120)]
    with pytest.raises(InvalidArgument):
        schedule.handler({"work": ["nope"]}, context)
    with pytest.raises(ValueError):
        schedule.handler({"work": "syncs"}, context)


def test_redelivered_events_map_to_one_task_id(lambda_env: Path) -> None:
    assert task_id_for("default", "event:x") == task_id_for("default", "event:x")


def test_a_mesh_event_runs_a_memory_sync_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory.sync (registered by the memory service) through the events handler."""
    main = tmp_path / "main.db"
    stores = [
        {"id": "main", "url": f"sqlite:///{main}", "primary": True},
        {"id": "edge", "url": f"sqlite:///{tmp_path / 'edge.db'}"},
    ]
    trigger = {"name": "sync", "types": ["inventory.changed"], "action": "memory.sync"}
    monkeypatch.setenv("DATAMCP_DATABASE_URL", f"sqlite+aiosqlite:///{main}")
    monkeypatch.setenv("DATAMCP_MEMORY_STORES", json.dumps(stores))
    monkeypatch.setenv("DATAMCP_EVENTS_TRIGGERS", json.dumps([{**trigger, "params": {}}]))
    monkeypatch.setenv("DATAMCP_LOGGING_LEVEL", "WARNING")
    try:
        detail = mesh_cloudevent("inventory.changed", {}, event_id="inv-1")
        for _ in range(2):  # EventBridge retries: one sync
            assert route(eventbridge_event("inventory.changed", detail))["triggers"] == ["sync"]
        assert stored_types("default", "sync.*") == ["sync.started", "sync.completed"]
    finally:
        _runtime.shutdown()
