"""The event bus core: CloudEvents-shaped events, the durable store with group
commit, durable subscriptions with acks and dead letters, replay, and the
trigger router. No grpc, protobuf or boto here."""

from datamcp.core.events.model import Event, EventFilter, new_event

__all__ = ["Event", "EventFilter", "new_event"]
