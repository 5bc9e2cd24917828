"""Core errors become the right status with google.rpc.Status details;
nothing a client sends can produce UNKNOWN, and no stack trace leaks.
Hostile input is refused at the edge with a field violation (and nothing of
it is stored); what was accepted always reads back; error text is cut to fit
the client's limits and carries no internals."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, message_factory, struct_pb2, timestamp_pb2
from sqlalchemy import text

from datamcp.entrypoints.grpc.server import hosted_services
from datamcp.entrypoints.grpc.values import fill_value, to_value
from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    health_pb2,
    memory_pb2,
    memory_pb2_grpc,
    pipelines_pb2_grpc,
    streams_pb2,
)
from tests.events_client import Subscriber, cloud_event
from tests.probe import S, probe_call, probe_registration
from tests.streams_client import job_spec
from tests.support import make_settings, rich_details, running_server


async def test_unexpected_exception_is_internal_with_error_id_in_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Boom")(S())
    error = err.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in error.details()
    assert "Traceback" not in error.details()
    error_id = rich_details(error)["ErrorInfo"].metadata["error_id"]
    assert error_id in error.details()
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None


async def test_invalid_argument_carries_field_violations(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Invalid")(S(), metadata=(("x-request-id", "r-1"),))
    details = rich_details(err.value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = details["BadRequest"].field_violations[0]
    assert (violation.field, violation.description) == ("name", "must not be empty")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert details["ErrorInfo"].metadata["request_id"] == "r-1"


async def test_version_conflict_is_aborted_with_stable_reason(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Conflict")(S())
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert rich_details(err.value)["ErrorInfo"].reason == "VERSION_MISMATCH"


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\x05ab", b"\x08"])
async def test_malformed_request_bytes_are_invalid_argument(tmp_path: Path, payload: bytes) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as channel:
        raw = channel.unary_unary(
            "/datamcp.v1.HealthService/GetHealthReport",
            request_serializer=lambda b: b,
            response_deserializer=health_pb2.GetHealthReportResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_details(err.value)["BadRequest"].field_violations[0].field == "request"


async def test_unknown_method_is_unimplemented(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/datamcp.v1.HealthService/Nope")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_oversized_request_is_resource_exhausted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.max_message_bytes": 2048})
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "WhoAmI")(S(value="x" * 10_000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- hostile input: range checks at the edge -----------------------------------------


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad = rich_details(error)["BadRequest"]
    return {v.field: v.description for v in bad.field_violations}


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


HOSTILE_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"id_": "x\x00t"}, "event.id"),
    ({"id_": "x\nt"}, "event.id"),
    ({"id_": "i" * 129}, "event.id"),
    ({"source": "/a\x07b"}, "event.source"),
    ({"source": "/" * 513}, "event.source"),
    ({"subject": "s\x00"}, "event.subject"),
    ({"subject": "s\r\n"}, "event.subject"),
    ({"type_": "a." + "b" * 300}, "event.type"),
    ({"correlation_id": "c" * 129}, "event.correlation_id"),
    ({"traceparent": "t\x1b[31m"}, "event.traceparent"),
    ({"time": timestamp_pb2.Timestamp(seconds=10**15)}, "event.time"),
    ({"time": timestamp_pb2.Timestamp(seconds=-(10**15))}, "event.time"),
    ({"time": timestamp_pb2.Timestamp(seconds=1, nanos=-1)}, "event.time"),
    ({"data": {"a": [1, float("nan")]}}, "event.data.a[1]"),
    ({"data": {"x": float("inf")}}, "event.data.x"),
]


async def test_hostile_event_fields_are_refused_and_nothing_is_stored(
    tmp_path: Path, database_url: str
) -> None:
    """Issue 16, item 2: an id such as x\\x00t never reaches the database;
    the same for every event field that is a key, header or log field."""
    refused: dict[str, list[str]] = {}
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        for fields, field in HOSTILE_EVENTS:
            event = cloud_event(**{k: v for k, v in fields.items() if k != "data"})
            if "data" in fields:
                fill_value(event.data, fields["data"])
            for _ in range(2):  # again: a republished bad id is refused the same way
                error = await _refused(stub.Publish(events_pb2.PublishRequest(event=event)))
                refused.setdefault(field, []).extend(_violations(error))
            batch = events_pb2.PublishBatchRequest(events=[cloud_event(), event])
            error = await _refused(stub.PublishBatch(batch))
            refused[field].extend(_violations(error))
        stored = [r async for r in stub.Replay(events_pb2.ReplayRequest())]
    for _, field in HOSTILE_EVENTS:
        assert field in refused[field], refused[field]
        assert field.replace("event.", "events[1].") in refused[field], refused[field]
    assert stored == []


async def test_out_of_range_times_and_durations_are_refused(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        replay = stub.Replay(
            events_pb2.ReplayRequest(from_time=timestamp_pb2.Timestamp(seconds=-(10**15)))
        )
        replay_error = await _refused(replay.read())
        sub = Subscriber(ch)
        open_ = events_pb2.SubscribeRequest.Open(subscription="s", filter=events_pb2.EventFilter())
        open_.visibility_timeout.CopyFrom(duration_pb2.Duration(seconds=5, nanos=-1))
        await sub.call.write(events_pb2.SubscribeRequest(open=open_))
        open_error = await sub.error()
        sub.close()
    assert "from_time" in _violations(replay_error)
    assert isinstance(open_error, grpc.aio.AioRpcError)
    assert open_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open.visibility_timeout" in _violations(open_error)


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"a": {"b": [float("-inf")]}}, json.loads("[" * 40 + "]" * 40)],
    ids=["nan", "infinity", "nesting"],
)
async def test_memory_values_must_be_json(tmp_path: Path, database_url: str, value: Any) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = memory_pb2_grpc.MemorySyncServiceStub(ch)
        put = memory_pb2.PutRequest(namespace="n", key="k", value=to_value(value))
        error = await _refused(stub.Put(put))
        listed = await stub.List(memory_pb2.ListRequest())
    assert any(f.startswith("value") for f in _violations(error))
    assert list(listed.records) == []


# --- item 5 of the issue: what is accepted stays readable ----------------------------


async def test_a_ttl_past_100_years_is_refused_and_stores_nothing(
    tmp_path: Path, database_url: str
) -> None:
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = memory_pb2_grpc.MemorySyncServiceStub(ch)
        value = to_value({"v": 1})
        huge = duration_pb2.Duration(seconds=310_000_000_000)  # a valid Duration
        error = await _refused(
            stub.Put(memory_pb2.PutRequest(namespace="n", key="k", value=value, ttl=huge))
        )
        batch_error = await _refused(
            stub.BatchPut(
                memory_pb2.BatchPutRequest(
                    entries=[memory_pb2.PutEntry(namespace="n", key="k", value=value, ttl=huge)]
                )
            )
        )
        century = duration_pb2.Duration(seconds=100 * 365 * 86_400)
        kept = await stub.Put(
            memory_pb2.PutRequest(namespace="n", key="k2", value=value, ttl=century)
        )
        listed = await stub.List(memory_pb2.ListRequest())
    assert "ttl" in _violations(error)
    assert "entries[0].ttl" in _violations(batch_error)
    assert [r.key for r in listed.records] == ["k2"]
    assert kept.record.expire_time.seconds > time.time() + 99 * 365 * 86_400


async def test_a_stored_expiry_out_of_timestamp_range_still_reads(
    tmp_path: Path, database_url: str
) -> None:
    """A record written before the TTL bound (expiry in year ~11800) must not
    poison reads: every read answers, and sync copies it readable."""
    stores = [
        {"id": "main", "url": database_url, "primary": True},
        {"id": "b", "url": f"sqlite:///{tmp_path / 'b.db'}"},
    ]
    settings = make_settings(tmp_path, database_url, **{"memory.stores": stores})
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = memory_pb2_grpc.MemorySyncServiceStub(ch)
        await stub.Put(
            memory_pb2.PutRequest(
                namespace="n", key="k", value=to_value(1), ttl=duration_pb2.Duration(seconds=60)
            )
        )
        store = srv.server.app.memory.service.store("main")
        engine = store.engine  # type: ignore[attr-defined]
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE memory_records SET expires_at = :at"),
                {"at": time.time() + 310_000_000_000},
            )
        got = await stub.Get(memory_pb2.GetRequest(namespace="n", key="k"))
        listed = await stub.List(memory_pb2.ListRequest())
        found = await stub.Search(memory_pb2.SearchRequest(text="1"))
        history = await stub.GetHistory(memory_pb2.GetHistoryRequest(namespace="n", key="k"))
        watch = stub.WatchChanges(memory_pb2.WatchChangesRequest())
        change = await asyncio.wait_for(watch.read(), 5)
        watch.cancel()
        run = await stub.Synchronize(memory_pb2.SynchronizeRequest(), timeout=60)
        copied = await stub.Get(memory_pb2.GetRequest(namespace="n", key="k", store="b"))
    assert got.record.expire_time.seconds == 253_402_300_799  # the latest a Timestamp holds
    assert len(listed.records) == len(found.records) == len(history.versions) == 1
    assert change.record.key == "k"
    assert run.run.status == memory_pb2.SYNC_RUN_STATUS_SUCCEEDED, run.run.error
    assert copied.record.expire_time.seconds == 253_402_300_799


# --- page tokens ---------------------------------------------------------------------


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


HOSTILE_TOKENS = {
    "deep-json": _token(b"[" * 100_000 + b"]" * 100_000),
    "deep-object": _token(b'{"a":' * 2_000 + b"1" + b"}" * 2_000),
    "nan": _token(b'[NaN, "x"]'),
    "overflow": _token(b'[1e400, "x"]'),
    "huge-int": _token(json.dumps(10**40).encode()),
    "nul": _token(json.dumps([1.0, "a\x00b"]).encode()),
    "nul-name": _token(json.dumps("a\x00b").encode()),
    "long": _token(json.dumps("x" * 20_000).encode()),
    "object": _token(b'{"a": [1, 2]}'),
    "not-base64": "%%%%",
    "not-utf8": _token(b"\xff\xfe\xfd"),
}

#: Every RPC with a page_token, from the hosted services' descriptors.
PAGED = [
    m
    for service in hosted_services()
    for m in service.methods
    if "page_token" in m.input_type.fields_by_name
]


async def test_hostile_page_tokens_are_invalid_argument_on_every_list(
    tmp_path: Path, database_url: str
) -> None:
    assert len(PAGED) >= 10
    answers = {}
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        for method in PAGED:
            call = ch.unary_unary(
                f"/{method.containing_service.full_name}/{method.name}",
                request_serializer=lambda m: m.SerializeToString(),
            )
            for name, token in HOSTILE_TOKENS.items():
                request = message_factory.GetMessageClass(method.input_type)(page_token=token)
                if "subscription" in method.input_type.fields_by_name:
                    request.subscription = "s1"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(request)
                answers[method.name, name] = (err.value.code(), _violations(err.value))
    for where, (code, violations) in answers.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, where
        assert "page_token" in violations, where


# --- error text and its size ---------------------------------------------------------


async def test_a_10kb_id_comes_back_cut_in_not_found(tmp_path: Path) -> None:
    long_id = "x" * 10_000
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as task:
            await agents_pb2_grpc.AgentServiceStub(ch).GetTask(
                agents_pb2.GetTaskRequest(id=long_id)
            )
        with pytest.raises(grpc.aio.AioRpcError) as store:
            await memory_pb2_grpc.MemorySyncServiceStub(ch).Get(
                memory_pb2.GetRequest(namespace="n", key="k", store=long_id)
            )
        with pytest.raises(grpc.aio.AioRpcError) as sub:
            await events_pb2_grpc.EventServiceStub(ch).DeleteSubscription(
                events_pb2.DeleteSubscriptionRequest(subscription=long_id)
            )
    for err in (task, store, sub):
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert "x" * 60 in err.value.details()
        assert len(err.value.details()) < 1_000
        assert rich_details(err.value)["ErrorInfo"].reason  # the details decode


async def test_a_thousand_violations_fit_the_trailers(tmp_path: Path) -> None:
    events = [cloud_event(id_="\n" * 100, source="", type_="Bad") for _ in range(1000)]
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        error = await _refused(
            events_pb2_grpc.EventServiceStub(ch).PublishBatch(
                events_pb2.PublishBatchRequest(events=events)
            )
        )
    violations = rich_details(error)["BadRequest"].field_violations
    assert 5 < len(violations) < 200
    assert "more problem(s) not shown" in violations[-1].description


async def test_internals_in_an_error_message_are_withheld_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "LeakySql")(S())
    error = err.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    text = error.details() + str(rich_details(error)["ErrorInfo"])
    assert "INSERT" not in text and "OperationalError" not in text and "secret" not in text
    error_id = rich_details(error)["ErrorInfo"].metadata["error_id"]
    assert error_id in error.details()
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and "INSERT INTO events" in str(logged[0].withheld)  # type: ignore[attr-defined]


async def test_a_data_error_is_internal_not_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that fails on the data (here its table is gone) is a bug, not
    an outage: INTERNAL with an error id, never UNAVAILABLE (which tells
    clients to retry forever), and no SQL in the answer."""
    caplog.set_level(logging.WARNING)
    stores = [
        {"id": "main", "url": f"sqlite:///{tmp_path / 'main.db'}", "primary": True},
        {"id": "b", "url": f"sqlite:///{tmp_path / 'b.db'}"},
    ]
    settings = make_settings(tmp_path, **{"memory.stores": stores})
    async with running_server(settings) as srv, srv.channel() as ch:
        stub = memory_pb2_grpc.MemorySyncServiceStub(ch)
        engine = srv.server.app.memory.service.store("b").engine  # type: ignore[attr-defined]
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE memory_records"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Put(
                memory_pb2.PutRequest(namespace="n", key="k", value=to_value(1), store="b")
            )
        listed = await stub.ListStores(memory_pb2.ListStoresRequest())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    for text_ in (err.value.details(), *(s.error for s in listed.stores)):
        assert "memory_records" not in text_ and "Error" not in text_, text_
    assert [s.healthy for s in listed.stores] == [True, False]


# --- answers that fit the message limit ----------------------------------------------


async def _pages(call: Any, request: Any, items: str) -> list[int]:
    """Page through a List RPC; the number of items on each page."""
    sizes = []
    while True:
        response = await call(request)
        sizes.append(len(getattr(response, items)))
        assert response.ByteSize() < 4 * 1024 * 1024
        if not response.next_page_token:
            return sizes
        request.page_token = response.next_page_token


async def test_list_pages_are_bounded_by_bytes(tmp_path: Path, database_url: str) -> None:
    """Twenty 262 kB records are 5 MB: a page stops early (with a token)
    instead of exceeding the 4 MB message limit clients receive."""
    big = "x" * 262_000
    settings = make_settings(tmp_path, database_url, **{"memory.history_depth": 25})
    async with running_server(settings) as srv, srv.channel() as ch:
        memory = memory_pb2_grpc.MemorySyncServiceStub(ch)
        events = events_pb2_grpc.EventServiceStub(ch)
        value = to_value(big)
        for i in range(20):
            await memory.Put(memory_pb2.PutRequest(namespace="big", key=f"k{i}", value=value))
            await memory.Put(memory_pb2.PutRequest(namespace="hist", key="h", value=value))
        listed = await _pages(
            memory.List, memory_pb2.ListRequest(namespace_prefix="big"), "records"
        )
        found = await _pages(memory.Search, memory_pb2.SearchRequest(text="xxx"), "records")
        history = await memory.GetHistory(
            memory_pb2.GetHistoryRequest(namespace="hist", key="h", page_size=20)
        )
        sub = Subscriber(ch)
        await sub.open("big", ["big.*"], credits=20, max_attempts=1)
        for _ in range(20):
            await events.Publish(
                events_pb2.PublishRequest(event=cloud_event("big.event", data={"v": big[:250_000]}))
            )
        for delivery in await sub.take(20):
            await sub.nack(delivery.event.sequence, "too big to handle")
        for _ in range(100):  # the nacks are applied as the stream reads them
            subs = await events.ListSubscriptions(events_pb2.ListSubscriptionsRequest())
            if subs.subscriptions[0].dead_letters == 20:
                break
            await asyncio.sleep(0.1)
        sub.close()
        dead = await _pages(
            events.ListDeadLetters,
            events_pb2.ListDeadLettersRequest(subscription="big"),
            "dead_letters",
        )
    assert sum(listed) == 20 and len(listed) > 1, listed
    assert sum(found) == 21 and len(found) > 1, found  # 20 keys in big/, 1 in hist/
    assert 1 <= len(history.versions) < 20
    assert sum(dead) == 20 and len(dead) > 1, dead


async def test_pushed_records_out_of_range_are_refused_one_by_one(
    tmp_path: Path, database_url: str
) -> None:
    """An event time past year 9999 once made a stream job fail at every
    step from then on (an int64 overflow in its window table), with the
    exception's class name as its last_error; NaN was stored as is."""
    async with running_server(make_settings(tmp_path, database_url)) as srv, srv.channel() as ch:
        stub = pipelines_pb2_grpc.PipelineServiceStub(ch)
        created = await stub.CreateStreamJob(
            streams_pb2.CreateStreamJobRequest(
                job=streams_pb2.StreamJob(name="j", spec=job_spec(size=60))
            )
        )
        job_id = created.job.id
        records = [
            {"k": "a", "t": 1e300, "v": 1},
            {"k": "a", "t": 100, "v": 1, "note": float("nan")},
            {"k": "a", "t": 100, "v": 2},
            {"k": "a", "t": -1e17, "v": 3},
        ]
        structs = []
        for record in records:
            struct = struct_pb2.Struct()
            for key, item in record.items():
                fill_value(struct.fields[key], item)
            structs.append(struct)

        async def push() -> Any:
            yield streams_pb2.PushRecordsRequest(job_id=job_id, records=structs)

        summary = await stub.PushRecords(push())
        bad_spec = job_spec(size=60)
        bad_spec.window.size.CopyFrom(duration_pb2.Duration(seconds=60, nanos=-5))
        spec_error = await _refused(
            stub.CreateStreamJob(
                streams_pb2.CreateStreamJobRequest(
                    job=streams_pb2.StreamJob(name="k", spec=bad_spec)
                )
            )
        )
        for _ in range(50):
            job = (await stub.GetStreamJob(streams_pb2.GetStreamJobRequest(id=job_id))).job
            if job.counters.records_accepted:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a few more steps: none may fail
        job = (await stub.GetStreamJob(streams_pb2.GetStreamJobRequest(id=job_id))).job
    assert (summary.accepted, summary.rejected) == (1, 3)
    assert [r.field for r in summary.rejections] == [
        "records[0].t",
        "records[1].note",
        "records[3].t",
    ]
    assert "job.spec.window.size" in _violations(spec_error)
    assert job.counters.records_accepted == 1
    assert job.last_error == ""


async def test_list_tasks_pages_are_bounded_by_bytes(tmp_path: Path) -> None:
    big = to_value("y" * 900_000)
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as ch:
        agents = agents_pb2_grpc.AgentServiceStub(ch)
        for _ in range(5):
            await agents.ExecuteTask(
                agents_pb2.ExecuteTaskRequest(
                    task=agents_pb2.TaskSpec(capability="echo", input=big)
                )
            )
        pages = await _pages(agents.ListTasks, agents_pb2.ListTasksRequest(), "tasks")
    assert sum(pages) == 5 and len(pages) > 1, pages
