"""Declarative triggers: an event pattern mapped to an action.

Each trigger is a durable subscription named ``trigger:<name>``, so its
actions run at least once, survive restarts, retry with backoff and end in
the dead letters after ``max_attempts``. Actions are registered by name; a
trigger naming an action nobody registered is a configuration error.

Built in: ``events.publish`` publishes a derived event (id derived from the
trigger and the cause, so a redelivered cause never publishes twice). The
agent, pipeline and memory services register ``agent.submit_task``,
``pipeline.run`` and ``memory.sync`` as they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import ConfigError, NotFound, error_id, failure_text
from datamcp.core.events.api import EventDraft, EventsApi
from datamcp.core.events.consumer import Consumer
from datamcp.core.events.model import TYPE_RE, Event, EventFilter

log = logging.getLogger(__name__)

Action = Callable[[Event, Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    filter: EventFilter
    action: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tenant: str = "default"

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Trigger:
        """Build from a config table; raises ConfigError naming what is wrong."""
        name = str(raw.get("name", ""))
        where = f"events.triggers[{name or '?'}]"
        try:
            flt = EventFilter.build(
                list(raw.get("types", [])), str(raw.get("source", "")), str(raw.get("subject", ""))
            )
        except Exception as exc:
            raise ConfigError([f"{where}: {exc}"]) from exc
        action = str(raw.get("action", ""))
        params = raw.get("params", {})
        if not name or not action or not isinstance(params, dict):
            raise ConfigError([f"{where}: needs name, action and a params table"])
        return cls(name, flt, action, params, str(raw.get("tenant", "default")))


class Router:
    def __init__(self, api: EventsApi, triggers: Sequence[Trigger]) -> None:
        self._api = api
        self._triggers = list(triggers)
        self._actions: dict[str, Action] = {"events.publish": self._publish_action}
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[Consumer] = []

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        return tuple(self._triggers)

    def register_action(self, name: str, action: Action) -> None:
        self._actions[name] = action

    def validate(self) -> None:
        """Every trigger names a registered action with the params it needs."""
        problems = [
            f"events.triggers[{t.name}]: unknown action {t.action!r} "
            f"(known: {', '.join(sorted(self._actions))})"
            for t in self._triggers
            if t.action not in self._actions
        ]
        for t in self._triggers:
            if t.action == "events.publish" and not TYPE_RE.match(str(t.params.get("type", ""))):
                problems.append(f"events.triggers[{t.name}]: params.type must be an event type")
        if problems:
            raise ConfigError(problems)

    async def dispatch(self, event: Event) -> list[str]:
        """Run, here and now, the action of every trigger matching ``event``
        (same tenant, filter matches), in configuration order; returns the
        names of the triggers that ran. The Lambda events handler routes
        EventBridge events this way instead of through subscriptions. A
        failing action raises after the earlier ones ran: actions are
        idempotent per cause (derived ids), so the caller retries the lot."""
        ran: list[str] = []
        for trigger in self._triggers:
            if trigger.tenant == event.tenant and trigger.filter.matches(event):
                await self._actions[trigger.action](event, trigger.params)
                ran.append(trigger.name)
        return ran

    async def start(self) -> None:
        self.validate()
        for trigger in self._triggers:
            # Opened before start() returns: a new subscription starts at the
            # latest event, so events published after start are never missed.
            consumer = await self._open(trigger)
            self._tasks.append(
                asyncio.create_task(self._run(trigger, consumer), name=f"trigger:{trigger.name}")
            )

    async def _open(self, trigger: Trigger) -> Consumer:
        consumer = await self._api.open_consumer(
            trigger.tenant, f"trigger:{trigger.name}", trigger.filter
        )
        self._consumers.append(consumer)
        return consumer

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.close()
        self._tasks.clear()
        self._consumers.clear()

    async def _run(self, trigger: Trigger, opened: Consumer) -> None:
        action = self._actions[trigger.action]
        consumer: Consumer | None = opened
        while True:
            try:
                if consumer is None:
                    consumer = await self._open(trigger)
                async for delivery in consumer.deliveries():
                    event = delivery.event
                    try:
                        await action(event, trigger.params)
                    except Exception as exc:
                        log.warning(
                            "trigger action failed",
                            extra={
                                "trigger": trigger.name,
                                "event_id": event.id,
                                "error_id": error_id(exc),
                            },
                            exc_info=exc,
                        )
                        await consumer.nack(event.seq, failure_text(exc))
                    else:
                        await consumer.ack([event.seq])
            except asyncio.CancelledError:
                raise
            except NotFound:  # someone deleted the trigger's subscription: make it again
                consumer = None
            except Exception:  # the store is down: wait and carry on
                log.warning("trigger loop failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _publish_action(self, cause: Event, params: Mapping[str, Any]) -> None:
        await self._api.publish(
            cause.tenant,
            [
                EventDraft(
                    type=str(params["type"]),
                    source=str(params.get("source", "/datamcp/router")),
                    subject=str(params.get("subject", cause.subject)),
                    id=f"{params['type']}:{cause.id}"[:128],
                    correlation_id=cause.correlation_id or cause.id,
                    traceparent=cause.traceparent,
                    data={
                        "cause": {"id": cause.id, "type": cause.type, "sequence": cause.seq},
                        "data": cause.data,
                        **dict(params.get("data", {})),
                    },
                )
            ],
        )
