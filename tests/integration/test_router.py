"""Declarative triggers: an event pattern mapped to an action, durable and idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from datamcp.bootstrap import App
from datamcp.core.errors import ConfigError
from datamcp.core.events.api import EventDraft
from datamcp.core.events.model import Event, EventFilter
from datamcp.core.events.router import Router, Trigger
from datamcp.v1 import events_pb2, events_pb2_grpc
from tests.events_client import cloud_event
from tests.support import make_settings, running_server

ALERT = {
    "name": "alert-on-failure",
    "types": ["task.failed"],
    "action": "events.publish",
    "params": {"type": "alert.raised", "data": {"severity": "high"}},
}


async def _wait_for(predicate: Any, timeout: float = 10) -> Any:
    async def poll() -> Any:
        while not (result := await predicate()):
            await asyncio.sleep(0.05)
        return result

    return await asyncio.wait_for(poll(), timeout)


async def test_trigger_publishes_a_derived_event_once(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, **{"events.triggers": [ALERT]})
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        failed = cloud_event("task.failed", "task-9", {"error": "boom"}, id_="f-1")
        await stub.Publish(events_pb2.PublishRequest(event=failed), timeout=10)
        succeeded = cloud_event("task.succeeded")
        await stub.Publish(events_pb2.PublishRequest(event=succeeded), timeout=10)
        request = events_pb2.ReplayRequest(filter=events_pb2.EventFilter(types=["alert.*"]))

        async def alerts() -> list[events_pb2.CloudEvent]:
            return [r.event async for r in stub.Replay(request, timeout=10)]

        (alert,) = await _wait_for(alerts)
        await asyncio.sleep(0.5)
        assert len(await alerts()) == 1
    assert alert.subject == "task-9" and alert.correlation_id == "f-1"
    data = json_format.MessageToDict(alert.data)
    assert data["severity"] == "high"
    assert data["cause"]["id"] == "f-1" and data["data"] == {"error": "boom"}


async def test_failing_action_retries_then_dead_letters(tmp_path: Path) -> None:
    trigger = {"name": "flaky", "types": ["task.*"], "action": "test.flaky", "params": {}}
    settings = make_settings(tmp_path, **{"events.triggers": [trigger], "events.max_attempts": 3})
    calls: list[str] = []

    async def flaky(event: Event, params: Mapping[str, Any]) -> None:
        calls.append(event.id)
        raise RuntimeError("downstream is down")

    with pytest.raises(ConfigError, match=r"unknown action 'test\.flaky'"):
        await App.create(settings)
    app = await App.create(make_settings(tmp_path, **{"events.max_attempts": 3}))
    try:
        app.router = Router(app.events, [Trigger.from_config(trigger)])
        app.router.register_action("test.flaky", flaky)
        await app.start()
        await app.events.publish("default", [EventDraft(type="task.started", source="/t", id="x")])
        subs = app.events.subscriptions

        async def buried() -> bool:
            return bool(await subs.dead_letters("default", "trigger:flaky", 0, 10))

        await _wait_for(buried, timeout=20)
        (dead,) = await subs.dead_letters("default", "trigger:flaky", 0, 10)
    finally:
        await app.close()
    assert calls == ["x", "x", "x"]
    # An unexpected error's text stays in the log; the dead letter names its id.
    assert dead.attempts == 3 and "error id" in dead.last_error
    assert "downstream is down" not in dead.last_error


def test_trigger_config_errors_are_actionable() -> None:
    with pytest.raises(ConfigError, match=r"needs name, action"):
        Trigger.from_config({"types": ["task.*"]})
    with pytest.raises(ConfigError, match=r"invalid type pattern"):
        Trigger.from_config({"name": "x", "types": ["Bad"], "action": "events.publish"})
    assert Trigger.from_config(ALERT).filter == EventFilter(("task.failed",))
