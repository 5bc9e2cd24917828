"""EventBridge and SQS brokers against a real (moto) server: batching, routing,
FIFO order and deduplication, retries and the errors that name failed events."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from datamcp.adapters.aws import EventBridgeBroker, SqsBroker
from datamcp.adapters.aws.sqs import fifo_token
from datamcp.core.errors import Unavailable
from datamcp.core.events.model import Event, new_event
from datamcp.core.events.ports import Broker

REGION = "us-east-1"
SUCCEEDED = "pipeline.run.succeeded"
OTHER_TYPES = ("pipeline.run.failed", "dataset.updated")
LIMIT = 256 * 1024


def make_events(
    n: int, *, type_of: Callable[[int], str] = lambda i: SUCCEEDED, data_bytes: int = 0, **kw: Any
) -> list[Event]:
    return [
        new_event(
            type=type_of(i),
            source="/tests/aws",
            data={"n": i, "pad": "x" * data_bytes},
            tenant="acme",
            correlation_id=f"corr-{i}",
            **kw,
        )
        for i in range(n)
    ]


@pytest.fixture
async def brokers() -> AsyncIterator[list[Any]]:
    """Brokers a test makes; closed after it."""
    made: list[Any] = []
    yield made
    for broker in made:
        await broker.close()


async def new_queue(sqs: Any, *, fifo: bool = False) -> tuple[str, str]:
    name = f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
    attributes = {"FifoQueue": "true"} if fifo else {}
    url = (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    return url, arn


async def route(events: Any, bus: str, pattern: dict[str, Any], queue_arn: str) -> None:
    rule = f"r-{uuid.uuid4().hex[:8]}"
    await events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
    await events.put_targets(
        Rule=rule, EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )


async def drain(sqs: Any, url: str, expected: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Receive (and delete) until ``expected`` messages arrived or ``timeout``, then
    poll once more so that extra messages show up as a wrong count."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        done = len(got) >= expected or time.monotonic() > deadline
        response = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        batch = response.get("Messages", [])
        got += batch
        for message in batch:
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if done and not batch:
            return got


async def spy(monkeypatch: pytest.MonkeyPatch, broker: Any, method: str) -> list[list[Any]]:
    """Record the Entries of every call the broker's client makes to ``method``."""
    client = await broker._client.get()
    real = getattr(client, method)
    calls: list[list[Any]] = []

    async def recording(**kwargs: Any) -> Any:
        calls.append(kwargs["Entries"])
        return await real(**kwargs)

    monkeypatch.setattr(client, method, recording)
    return calls


def failed_ids(exc: Unavailable) -> list[str]:
    return list(json.loads(exc.metadata["failed_event_ids"]))


def error_codes(exc: Unavailable) -> dict[str, str]:
    return dict(json.loads(exc.metadata["error_codes"]))


def test_brokers_satisfy_the_port_and_connect_lazily() -> None:
    ports: list[Broker] = [
        EventBridgeBroker("bus", region=REGION),
        SqsBroker("https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo", region=REGION),
    ]
    assert [p.name for p in ports] == ["eventbridge:bus", "sqs:q.fifo"]


# --- EventBridge ----------------------------------------------------------------


async def test_eventbridge_rule_routes_only_matching_events_to_sqs(
    moto_endpoint: str, events: Any, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = f"mesh-{uuid.uuid4().hex[:8]}"
    await events.create_event_bus(Name=bus)
    exact_url, exact_arn = await new_queue(sqs)
    prefix_url, prefix_arn = await new_queue(sqs)
    await route(events, bus, {"detail-type": [SUCCEEDED]}, exact_arn)
    await route(events, bus, {"detail-type": [{"prefix": "pipeline.run."}]}, prefix_arn)
    broker = EventBridgeBroker(bus, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "put_events")

    published = make_events(25, type_of=lambda i: SUCCEEDED if i % 3 == 0 else OTHER_TYPES[i % 2])
    await broker.publish(published)

    assert [len(c) for c in calls] == [10, 10, 5]
    matching = {e.id: e for e in published if e.type == SUCCEEDED}
    received = [json.loads(m["Body"]) for m in await drain(sqs, exact_url, len(matching))]
    assert sorted(r["detail"]["id"] for r in received) == sorted(matching)
    for envelope in received:
        event = matching[envelope["detail"]["id"]]
        assert envelope["source"] == "datamcp"
        assert envelope["detail-type"] == SUCCEEDED
        assert envelope["detail"] == event.to_cloudevent()
        assert envelope["detail"]["tenant"] == "acme"
    run_events = {e.id for e in published if e.type.startswith("pipeline.run.")}
    prefixed = await drain(sqs, prefix_url, len(run_events))
    assert sorted(json.loads(m["Body"])["detail"]["id"] for m in prefixed) == sorted(run_events)


async def test_eventbridge_missing_bus_names_every_event(
    moto_endpoint: str, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = EventBridgeBroker("no-such-bus", region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "put_events")
    published = make_events(12)

    with pytest.raises(Unavailable) as caught:
        await broker.publish(published)

    assert failed_ids(caught.value) == [e.id for e in published]
    codes = error_codes(caught.value)
    assert {codes[e.id] for e in published[:10]} == {"ResourceNotFoundException"}
    assert {codes[e.id] for e in published[10:]} == {"NotAttempted"}
    assert len(calls) == 1  # a missing bus is final: no retries, no second chunk


async def test_eventbridge_retries_failed_entries_until_delivered(
    moto_endpoint: str, events: Any, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = f"mesh-{uuid.uuid4().hex[:8]}"
    await events.create_event_bus(Name=bus)
    url, arn = await new_queue(sqs)
    await route(events, bus, {"source": ["datamcp"]}, arn)
    broker = EventBridgeBroker(bus, region=REGION, endpoint_url=moto_endpoint, base_delay=0.001)
    brokers.append(broker)
    client = await broker._client.get()
    real = client.put_events
    calls: list[int] = []

    async def flaky(Entries: list[dict[str, Any]]) -> dict[str, Any]:
        """First call: odd entries throttled, entry 2 malformed; only the rest go to moto."""
        calls.append(len(Entries))
        if len(calls) > 1:
            return dict(await real(Entries=Entries))
        code = {i: "ThrottlingException" for i in range(1, len(Entries), 2)} | {
            2: "MalformedDetail"
        }
        sent = await real(Entries=[e for i, e in enumerate(Entries) if i not in code])
        ok = iter(sent["Entries"])
        results = [{"ErrorCode": code[i]} if i in code else next(ok) for i in range(len(Entries))]
        return {"FailedEntryCount": len(code), "Entries": results}

    monkeypatch.setattr(client, "put_events", flaky)
    published = make_events(6)

    with pytest.raises(Unavailable) as caught:
        await broker.publish(published)

    assert calls == [6, 3]  # the three throttled entries, once more
    assert failed_ids(caught.value) == [published[2].id]
    assert error_codes(caught.value) == {published[2].id: "MalformedDetail"}
    arrived = [json.loads(m["Body"])["detail"]["id"] for m in await drain(sqs, url, 5)]
    assert sorted(arrived) == sorted(e.id for i, e in enumerate(published) if i != 2)


# --- SQS ------------------------------------------------------------------------


async def test_sqs_standard_queue_delivers_bodies_and_attributes(
    moto_endpoint: str, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = await new_queue(sqs)
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "send_message_batch")
    published = make_events(23, type_of=lambda i: (SUCCEEDED, *OTHER_TYPES)[i % 3])

    await broker.publish(published)

    assert [len(c) for c in calls] == [10, 10, 3]
    by_id = {e.id: e for e in published}
    received = await drain(sqs, url, len(published))
    assert len(received) == len(published)
    for message in received:
        body = json.loads(message["Body"])
        event = by_id.pop(body["id"])
        assert body == event.to_cloudevent()
        attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
        assert attributes == {"type": event.type, "tenant": "acme"}
    assert not by_id


async def test_sqs_fifo_keeps_order_per_subject_and_drops_republished_ids(
    moto_endpoint: str, sqs: Any, brokers: list[Any]
) -> None:
    url, _ = await new_queue(sqs, fifo=True)
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    runs = ["run-a", "run-b", "run with spaces " + "z" * 200]  # the last is hashed
    published = [
        new_event(type=SUCCEEDED, source="/t", data={"n": i}, tenant="acme", subject=runs[i % 3])
        for i in range(24)
    ]

    await broker.publish(published)
    await broker.publish(published[:5])  # same (tenant, id): SQS deduplicates

    messages = await drain(sqs, url, len(published))
    assert len(messages) == len(published)
    received = [json.loads(m["Body"]) for m in messages]
    for run in runs:
        got = [r["data"]["n"] for r in received if r["subject"] == run]
        assert got == [e.data["n"] for e in published if e.subject == run]
    groups = {m["Attributes"]["MessageGroupId"] for m in messages}
    assert groups == {"run-a", "run-b", fifo_token(runs[2])}


def test_fifo_tokens_keep_valid_values_and_hash_the_rest() -> None:
    assert fifo_token("acme:0123abc") == "acme:0123abc"
    assert fifo_token("a b") != fifo_token("a_b")
    long = fifo_token("é" * 10)
    assert long.startswith("sha256:") and len(long) <= 128
    assert fifo_token("x" * 129).startswith("sha256:")


async def test_sqs_missing_queue_names_every_event(
    moto_endpoint: str, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{moto_endpoint}/123456789012/does-not-exist"
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "send_message_batch")
    published = make_events(3)

    with pytest.raises(Unavailable) as caught:
        await broker.publish(published)

    assert caught.value.reason == "BROKER_PUBLISH_FAILED"
    assert failed_ids(caught.value) == [e.id for e in published]
    assert "NonExistentQueue" in set(error_codes(caught.value).values()).pop()
    assert len(calls) == 1


async def test_unreachable_endpoint_is_retried_then_reported(
    brokers: list[Any], monkeypatch: pytest.MonkeyPatch, moto_endpoint: str
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    broker = SqsBroker(
        f"{dead}/123456789012/q", region=REGION, endpoint_url=dead, max_attempts=3, base_delay=0.001
    )
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "send_message_batch")
    published = make_events(12)

    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await broker.publish(published)

    assert len(calls) == 6  # three attempts for each of the two batches
    assert failed_ids(caught.value) == [e.id for e in published]
    assert set(error_codes(caught.value).values()) == {"EndpointConnectionError"}
    assert time.monotonic() - started < 5


async def test_sqs_retries_server_faults_but_not_sender_faults(
    moto_endpoint: str, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = await new_queue(sqs)
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint, base_delay=0.001)
    brokers.append(broker)
    client = await broker._client.get()
    real = client.send_message_batch
    calls: list[int] = []

    async def flaky(QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Entry 1 fails on the server the first time; entry 2 is always refused."""
        calls.append(len(Entries))
        refuse = {"2"} | ({"1"} if len(calls) == 1 else set())
        sent = await real(QueueUrl=QueueUrl, Entries=[e for e in Entries if e["Id"] not in refuse])
        failed = [
            {"Id": i, "SenderFault": i == "2", "Code": "Bad" if i == "2" else "InternalError"}
            for i in sorted(refuse)
            if any(e["Id"] == i for e in Entries)
        ]
        return {"Successful": sent.get("Successful", []), "Failed": failed}

    monkeypatch.setattr(client, "send_message_batch", flaky)
    published = make_events(4)

    with pytest.raises(Unavailable) as caught:
        await broker.publish(published)

    assert calls == [4, 1]
    assert error_codes(caught.value) == {published[2].id: "Bad"}
    received = await drain(sqs, url, 3)
    assert sorted(json.loads(m["Body"])["id"] for m in received) == sorted(
        e.id for i, e in enumerate(published) if i != 2
    )


# --- Request size -----------------------------------------------------------------


def total_bytes(entries: Sequence[dict[str, Any]], body_key: str) -> int:
    return sum(len(e[body_key].encode()) for e in entries)


async def test_sqs_splits_batches_over_256kb(
    moto_endpoint: str, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = await new_queue(sqs)
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "send_message_batch")
    published = make_events(10, data_bytes=40_000)

    await broker.publish(published)

    assert len(calls) == 2
    assert all(total_bytes(c, "MessageBody") < LIMIT for c in calls)
    received = await drain(sqs, url, len(published))
    assert sorted(json.loads(m["Body"])["id"] for m in received) == sorted(e.id for e in published)


async def test_eventbridge_splits_requests_over_256kb(
    moto_endpoint: str, events: Any, sqs: Any, brokers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = f"mesh-{uuid.uuid4().hex[:8]}"
    await events.create_event_bus(Name=bus)
    url, arn = await new_queue(sqs)
    await route(events, bus, {"source": ["datamcp"]}, arn)
    broker = EventBridgeBroker(bus, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    calls = await spy(monkeypatch, broker, "put_events")
    published = make_events(10, data_bytes=40_000)

    await broker.publish(published)

    assert len(calls) == 2
    assert all(total_bytes(c, "Detail") < LIMIT for c in calls)
    received = await drain(sqs, url, len(published))
    arrived = sorted(json.loads(m["Body"])["detail"]["id"] for m in received)
    assert arrived == sorted(e.id for e in published)


async def test_an_event_too_big_for_any_request_is_reported_and_the_rest_sent(
    moto_endpoint: str, sqs: Any, brokers: list[Any]
) -> None:
    url, _ = await new_queue(sqs)
    broker = SqsBroker(url, region=REGION, endpoint_url=moto_endpoint)
    brokers.append(broker)
    small = make_events(2)
    huge = Event(id="huge", source="/t", type=SUCCEEDED, data="x" * LIMIT, tenant="acme")

    with pytest.raises(Unavailable) as caught:
        await broker.publish([small[0], huge, small[1]])

    assert error_codes(caught.value) == {"huge": "MessageTooLong"}
    received = await drain(sqs, url, 2)
    assert sorted(json.loads(m["Body"])["id"] for m in received) == sorted(e.id for e in small)
