"""CloudEvent protobuf <-> core event translation."""

from __future__ import annotations

from datamcp.core.events.api import EventDraft
from datamcp.core.events.model import (
    DeadLetter,
    Event,
    EventFilter,
    Subscription,
    SubscriptionStats,
)
from datamcp.entrypoints.grpc.convert import duration, epoch_of, timestamp
from datamcp.entrypoints.grpc.values import fill_value, from_value
from datamcp.v1 import events_pb2


def draft_from_proto(message: events_pb2.CloudEvent, prefix: str = "event.") -> EventDraft:
    """An event to publish; ``prefix`` names it in field violations."""
    return EventDraft(
        type=message.type,
        source=message.source,
        data=from_value(message.data, f"{prefix}data"),
        subject=message.subject,
        id=message.id,
        time=epoch_of(message.time, f"{prefix}time") if message.HasField("time") else None,
        correlation_id=message.correlation_id,
        traceparent=message.traceparent,
    )


def event_to_proto(event: Event) -> events_pb2.CloudEvent:
    message = events_pb2.CloudEvent(
        id=event.id,
        source=event.source,
        type=event.type,
        subject=event.subject,
        time=timestamp(event.time),
        datacontenttype=event.datacontenttype,
        tenant=event.tenant,
        correlation_id=event.correlation_id,
        traceparent=event.traceparent,
        sequence=event.seq,
    )
    if event.data is not None:
        fill_value(message.data, event.data)
    return message


def filter_from_proto(message: events_pb2.EventFilter, prefix: str = "filter.") -> EventFilter:
    return EventFilter.build(list(message.types), message.source, message.subject, prefix)


def filter_to_proto(value: EventFilter) -> events_pb2.EventFilter:
    return events_pb2.EventFilter(
        types=list(value.types), source=value.source, subject=value.subject
    )


def subscription_to_proto(sub: Subscription, stats: SubscriptionStats) -> events_pb2.Subscription:
    return events_pb2.Subscription(
        name=sub.name,
        filter=filter_to_proto(sub.filter),
        cursor=sub.cursor,
        lag=stats.lag,
        pending=stats.pending,
        in_flight=stats.in_flight,
        dead_letters=stats.dead_letters,
        max_attempts=sub.max_attempts,
        visibility_timeout=duration(sub.visibility_timeout),
        create_time=timestamp(sub.created_at),
    )


def dead_letter_to_proto(dead: DeadLetter) -> events_pb2.DeadLetter:
    return events_pb2.DeadLetter(
        subscription=dead.subscription,
        event=event_to_proto(dead.event),
        attempts=dead.attempts,
        last_error=dead.last_error,
        dead_time=timestamp(dead.dead_at),
    )
