"""``handlers.events.handler``: EventBridge events through the mesh's router.

The event's ``detail-type`` is the event type. When ``detail`` is a mesh
CloudEvent (what the EventBridge broker sends: ``specversion``, ``id``,
``type``, ``tenant``...) the event is that one, with its id, tenant and
correlation id; any other event becomes an event of tenant ``default`` with
EventBridge's id and the detail as data. Every trigger (``events.triggers``)
whose filter matches runs its action here, exactly as the servers' trigger
consumers would: ``agent.submit_task`` (the task runs in this invocation),
``events.publish``, and ``pipeline.run`` / ``memory.sync`` when those
services register them. Actions are idempotent per event id, so retries
(the handler raises when an action fails) have their effect once.

EventBridge invokes the function asynchronously: a raised error goes through
Lambda's retries and then the function's on-failure destination. An event
that can never succeed (not an EventBridge event, an action with invalid
input such as an unknown capability) is not retried: it goes once to the
dead-letter queue and the invocation answers ``dead_lettered`` (``_failures``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from datamcp.core.context import valid_tenant
from datamcp.core.errors import InvalidArgument
from datamcp.core.events.model import Event, new_event
from handlers import _failures, _runtime, _telemetry

if TYPE_CHECKING:
    from datamcp.bootstrap import App

MAX_ID = 128


@_telemetry.observed("events", _runtime.local_context)
def handler(event: Any, context: _runtime.LambdaContext | None) -> dict[str, Any]:
    try:
        cause = to_event(event)
    except ValueError as exc:
        return _failures.refuse(event, exc, context)

    async def work(app: App, deadline: float) -> dict[str, Any]:
        try:
            ran = await app.router.dispatch(cause)
        except Exception as exc:
            if not _failures.permanent(exc):
                _telemetry.count(failed=1)
                raise
            return await _failures.give_up(app, event, exc, context)
        unfinished = await app.agents.queued_tasks.settle(_runtime.remaining(deadline))
        _telemetry.count(processed=1)
        return {
            "id": cause.id,
            "type": cause.type,
            "tenant": cause.tenant,
            "triggers": ran,
            "unfinished_tasks": unfinished,
        }

    return _runtime.invoke(work, context)


def to_event(raw: Any) -> Event:
    """The mesh event an EventBridge event carries.

    Raises:
        ValueError: not an EventBridge event.
    """
    if (
        not isinstance(raw, Mapping)
        or not isinstance(raw.get("detail-type"), str)
        or not isinstance(raw.get("id"), str)
        or "detail" not in raw
    ):
        raise ValueError("not an EventBridge event: expected id, detail-type and detail")
    detail = raw["detail"]
    if isinstance(detail, Mapping) and detail.get("specversion") == "1.0":
        return _from_cloudevent(detail)
    return Event(
        id=raw["id"][:MAX_ID],
        source=str(raw.get("source", "")),
        type=raw["detail-type"],
        data=detail,
        time=parse_time(raw.get("time")),
    )


def _from_cloudevent(ce: Mapping[str, Any]) -> Event:
    """The mesh event a broker forwarded, checked as a publish would be (its
    tenant included: a forged or garbled one is refused, not stored)."""
    event_id, event_type = ce.get("id"), ce.get("type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise ValueError("the detail is a CloudEvent without an id or a type")
    tenant = str(ce.get("tenant") or "default")
    if not valid_tenant(tenant):
        raise ValueError("the CloudEvent's tenant is not a tenant name")
    try:
        event = new_event(
            id=event_id,
            source=str(ce.get("source", "")),
            type=event_type,
            data=ce.get("data"),
            subject=str(ce.get("subject", "")),
            time_=parse_time(ce.get("time")) or None,
            tenant=tenant,
            correlation_id=str(ce.get("correlationid", "")),
            traceparent=str(ce.get("traceparent", "")),
        )
    except InvalidArgument as exc:
        fields = ", ".join(v.field for v in exc.violations)
        raise ValueError(f"the CloudEvent is not a valid mesh event ({fields})") from None
    sequence = ce.get("sequence", 0)
    return replace(event, seq=sequence) if isinstance(sequence, int) and sequence > 0 else event


def parse_time(value: Any) -> float:
    """Epoch seconds of an RFC 3339 time (``Z`` or an offset); 0.0 when absent."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"time {value!r} is not RFC 3339") from None
