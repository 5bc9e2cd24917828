"""Tenant matrix rows of EventService: events, subscriptions, dead letters."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from datamcp.v1 import events_pb2
from tests.events_client import Subscriber, cloud_event
from tests.tenancy.probes import (
    NOT_FOUND,
    Row,
    answers,
    not_found,
)
from tests.tenancy.world import (
    SHARED_SUB,
    World,
)

# --- events, subscriptions, dead letters -------------------------------------------------

E = events_pb2


async def _publish_acme_ids(w: World) -> list[Message]:
    """acme's event ids are globex's own ids: stored for globex (or found
    among globex's own), never answered with acme's event. The envelope's
    tenant field is output only: naming acme there changes nothing."""
    one = await w.b.events.Publish(
        E.PublishRequest(event=cloud_event("globex.made", id_="evt-0", tenant="acme"))
    )
    batch = await w.b.events.PublishBatch(
        E.PublishBatchRequest(
            events=[cloud_event("globex.made", id_=f"evt-{i}", tenant="acme") for i in range(3)]
        )
    )
    acme_seqs = {int(s) for s in w.ids["event_seqs"].split(",")}
    assert one.sequence not in acme_seqs and one.id == "evt-0"
    assert not {r.sequence for r in batch.results} & acme_seqs
    assert batch.results[0].sequence == one.sequence
    replayed = [r.event async for r in w.b.events.Replay(E.ReplayRequest())]
    assert {e.tenant for e in replayed} == {"globex"}
    return [one, batch, *replayed]


async def _subscribe_same_name(w: World) -> list[Message]:
    """globex's own shared-sub, from the earliest, over acme's event types:
    nothing of acme's arrives; acks and nacks of acme's sequences do nothing."""
    sub = Subscriber(w.b.channel, w.b.metadata)
    try:
        state = await sub.open(SHARED_SUB, ["acme.*"], earliest=True)
        await sub.ack(*range(1, 50))
        await sub.nack(int(w.ids["dead_seq"]), "globex")
        assert await sub.nothing_for(1.0)
    finally:
        sub.close()
    listed = await w.b.events.ListSubscriptions(E.ListSubscriptionsRequest())
    return [state, listed]


def _acme_subscriptions(w: World) -> list[str]:
    """acme's subscriptions: its own, and the one of its stream job."""
    return ["acme-dead", f"stream:{w.ids['job']}"]


async def _subscribe_acme_name(w: World) -> list[Message]:
    for name in _acme_subscriptions(w):
        sub = Subscriber(w.b.channel, w.b.metadata)
        try:
            open_ = E.SubscribeRequest.Open(subscription=name)
            await sub.call.write(E.SubscribeRequest(open=open_))
            error = await sub.error()
        finally:
            sub.close()
        assert isinstance(error, grpc.RpcError) and error.code() == NOT_FOUND, name
    return []


async def _open_own_shared_sub(w: World) -> None:
    """globex's own subscription of acme's name (created if missing)."""
    sub = Subscriber(w.b.channel, w.b.metadata)
    try:
        await sub.open(SHARED_SUB, ["acme.*"], earliest=True)
    finally:
        sub.close()


async def _delete_same_name(w: World) -> list[Message]:
    """globex deletes its own shared-sub; acme's stays (the snapshot)."""
    await _open_own_shared_sub(w)
    dropped = await w.b.events.DeleteSubscription(
        E.DeleteSubscriptionRequest(subscription=SHARED_SUB)
    )
    return [dropped]


async def _replay(w: World) -> list[Message]:
    out: list[Message] = []
    for request in (
        E.ReplayRequest(),
        E.ReplayRequest(filter=E.EventFilter(types=["acme.*"])),
        E.ReplayRequest(filter=E.EventFilter(subject="acme-subject")),
        E.ReplayRequest(from_sequence=0, limit=100000),
    ):
        events = [r.event async for r in w.b.events.Replay(request)]
        assert {e.tenant for e in events} <= {"globex"}
        out.extend(events)
    return out


async def _own_dead_letters(w: World) -> list[Message]:
    """acme's page token and acme's dead sequence on globex's own subscription."""
    await _open_own_shared_sub(w)
    listed = await w.b.events.ListDeadLetters(
        E.ListDeadLettersRequest(subscription=SHARED_SUB, page_token=w.tokens["ListDeadLetters"])
    )
    assert not listed.dead_letters
    moved = await w.b.events.RedriveDeadLetters(
        E.RedriveDeadLettersRequest(subscription=SHARED_SUB, sequences=[int(w.ids["dead_seq"])])
    )
    assert moved.redriven == 0
    return [listed, moved]


EVENT_ROWS = [
    Row("EventService/Publish", ("events",), "acme's event id", _publish_acme_ids),
    Row("EventService/PublishBatch", ("events",), "acme's event ids", _publish_acme_ids),
    Row("EventService/Subscribe", ("subscriptions",), "acme's subscription name, no filter",
        _subscribe_acme_name),
    Row("EventService/Subscribe", ("subscriptions", "events", "dead letters"),
        "same name and acme's filter from the earliest, acking acme's sequences",
        _subscribe_same_name),
    Row("EventService/Replay", ("events",), "everything, acme's types and subject", _replay),
    Row("EventService/ListSubscriptions", ("subscriptions",), "all and acme's page token",
        answers(
            lambda w: w.b.events.ListSubscriptions(E.ListSubscriptionsRequest(page_size=1000)),
            lambda w: w.b.events.ListSubscriptions(
                E.ListSubscriptionsRequest(page_token=w.tokens["ListSubscriptions"])
            ),
        )),
    Row("EventService/DeleteSubscription", ("subscriptions",), "acme's subscriptions",
        not_found(*(
            lambda w, i=i: w.b.events.DeleteSubscription(
                E.DeleteSubscriptionRequest(subscription=_acme_subscriptions(w)[i])
            )
            for i in range(2)
        ))),
    Row("EventService/DeleteSubscription", ("subscriptions",), "its own of acme's name",
        _delete_same_name),
    Row("EventService/ListDeadLetters", ("dead letters",), "acme's subscription",
        not_found(
            lambda w: w.b.events.ListDeadLetters(E.ListDeadLettersRequest(subscription="acme-dead"))
        )),
    Row("EventService/ListDeadLetters", ("dead letters",), "acme's page token", _own_dead_letters),
    Row("EventService/RedriveDeadLetters", ("dead letters",), "acme's subscription and sequence",
        not_found(
            lambda w: w.b.events.RedriveDeadLetters(
                E.RedriveDeadLettersRequest(
                    subscription="acme-dead", sequences=[int(w.ids["dead_seq"])]
                )
            ),
            lambda w: w.b.events.RedriveDeadLetters(
                E.RedriveDeadLettersRequest(subscription="acme-dead")
            ),
        )),
    Row("EventService/RedriveDeadLetters", ("dead letters",),
        "acme's sequence on globex's subscription", _own_dead_letters),
]  # fmt: skip
